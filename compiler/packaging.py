"""Turning a chosen candidate into a signed package: manifest, test vectors, model file.

Test vectors are a few held-out inputs with the outputs the *exported* model gives on the
compiler's machine; an agent reruns them after installing to prove the model loads and computes
what was measured. Their tolerances depend on the number format: float kernels differ across CPUs
only by summation order, while int8 kernels (x86 VNNI, ARM dot-product, or a reference path)
may round a requantization differently and move an output by a quantization step or two.

Some CPUs differ by more than that. On x86 without VNNI (AVX2), onnxruntime's int8 matrix kernels
sum pairs of products in 16 bits and can saturate; on the digits MLP with per-channel weights this
moved some outputs by 0.13 (out of 1.0) from the scheme's exact arithmetic, while ARM's
dot-product kernels do not saturate. So the absolute tolerance also covers twice the gap, on the
test vectors themselves, between this machine's kernels and the runtime's unoptimised reference
arithmetic: a device that computes either way passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.package import Manifest, Target, TestVectors, pack_test_vectors
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.planner import Candidate, Plan
from edgefleet.compiler.report import plan_to_dict
from edgefleet.compiler.targets import Artifact, Exporter
from edgefleet.hardware_profiles.schema import NumberFormat

TEST_VECTORS_FILE = "test_vectors.npz"
TEST_VECTOR_COUNT = 4
EXTENSION = ".efpkg"

FLOAT_RTOL, FLOAT_ATOL = 1e-4, 1e-5
INT8_RTOL = 1e-2
INT8_ATOL_FRACTION = 0.02
"""int8: absolute tolerance as a fraction of the largest |output|: a 256-level scale's step is ~0.8%
of its range, so 2% allows two steps of difference plus float rounding around them."""


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


def tolerance(number_format: NumberFormat, expected: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> Tolerance:
    """How far a device's outputs may be from ``expected`` (this machine's kernels) for a model in
    ``number_format``, given ``reference``: the same inputs through the runtime's reference arithmetic."""
    gap = max((float(np.max(np.abs(e.astype(np.float64) - r))) for e, r in zip(expected, reference, strict=True) if e.size), default=0.0)
    if number_format in (NumberFormat.FP32, NumberFormat.FP16):
        rtol = FLOAT_RTOL if number_format is NumberFormat.FP32 else 1e-2
        return Tolerance(rtol=rtol, atol=max(FLOAT_ATOL, 2 * gap))
    peak = max((float(np.max(np.abs(e))) for e in expected if e.size), default=1.0)
    return Tolerance(rtol=INT8_RTOL, atol=max(1e-4, INT8_ATOL_FRACTION * peak, 2 * gap))


def package_path(out_dir: Path, name: str, profile: str) -> Path:
    return Path(out_dir) / f"{name}-{profile}{EXTENSION}"


def build(
    *,
    name: str,
    version: str,
    plan: Plan,
    candidate: Candidate,
    artifact: Artifact,
    exporter: Exporter,
    held_out: Dataset,
    reference_size: int,
    extra_report: dict[str, Any],
) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest (unsigned) and member files for one profile's package."""
    count = min(TEST_VECTOR_COUNT, len(held_out))
    vectors = held_out.take(range(count))
    feeds = list(vectors.feeds())
    stacked = exporter.run(artifact, feeds)
    outputs = [[out[i] for out in stacked] for i in range(count)]
    tol = tolerance(candidate.number_format, stacked, exporter.run_reference(artifact, feeds))
    files = dict(artifact.files)
    files[TEST_VECTORS_FILE] = pack_test_vectors([dict(f) for f in feeds], outputs)
    manifest = Manifest(
        name=name,
        version=version,
        target=Target(profile=plan.profile, runtime=artifact.runtime.value),
        model_file=artifact.model_file,
        inputs=list(artifact.inputs),
        outputs=list(artifact.outputs),
        compression=candidate.config,
        metrics={
            "size_bytes": candidate.size_bytes,
            "reference_size_bytes": reference_size,
            "smaller_by": round(reference_size / candidate.size_bytes, 2),
            "ram_bytes_estimate": candidate.ram_bytes,
            "params": candidate.params,
            "nonzero_params": candidate.nonzero_params,
            "fidelity": candidate.fidelity.to_dict(),
        },
        test_vectors=TestVectors(file=TEST_VECTORS_FILE, count=count, rtol=tol.rtol, atol=tol.atol),
        report={**plan_to_dict(plan, reference_size=reference_size), **extra_report},
    )
    return manifest, files

