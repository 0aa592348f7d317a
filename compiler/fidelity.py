"""How closely a compressed model follows the original, measured on the same inputs.

For each output the compiler records, over all samples:

- ``sqnr_db``: signal-to-quantization-noise ratio, 10 log10(sum(ref^2) / sum((ref - cand)^2)). ``None``
  means the outputs are identical (no noise), which JSON cannot write as infinity.
- ``cosine``: cosine similarity of the flattened outputs; insensitive to a global scale error.
- ``max_abs_error``: the worst single element, for setting test-vector tolerances.
- ``top1_agreement``: for a classifier output (float, shape ``[B, C]`` or ``[C]`` with C > 1),
  the fraction of rows whose argmax matches the original's.

The summary over outputs is the worst of each metric. Comparing against the original model, not
against labels, is the point: the budget says how much a compression may *change* the model.
When labels are available the accuracy of both is reported too, as context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    sqnr_db: float | None
    cosine: float
    max_abs_error: float
    top1_agreement: float | None = None


@dataclass(frozen=True)
class Fidelity:
    """Candidate vs reference on ``samples`` inputs; ``synthetic`` when those inputs were random."""

    samples: int
    synthetic: bool
    outputs: tuple[OutputFidelity, ...]
    accuracy: float | None = None
    reference_accuracy: float | None = None

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    @property
    def sqnr_db(self) -> float | None:
        values = [o.sqnr_db for o in self.outputs]
        finite = [v for v in values if v is not None]
        return min(finite) if finite else None

    @property
    def cosine(self) -> float:
        return min(o.cosine for o in self.outputs)

    @property
    def max_abs_error(self) -> float:
        return max(o.max_abs_error for o in self.outputs)

    @property
    def is_classifier(self) -> bool:
        return self.top1_agreement is not None

    def to_dict(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "synthetic": self.synthetic,
            "top1_agreement": self.top1_agreement,
            "sqnr_db": self.sqnr_db,
            "cosine": self.cosine,
            "max_abs_error": self.max_abs_error,
            "accuracy": self.accuracy,
            "reference_accuracy": self.reference_accuracy,
            "outputs": [asdict(o) for o in self.outputs],
        }


def is_classifier_output(per_sample_shape: Sequence[int], dtype: np.dtype) -> bool:
    """Scores over classes: a float output of shape ``[B, C]`` (or ``[C]``) with more than one class.

    Higher ranks (feature maps, sequences) are not treated as classifiers: their argmax means nothing alone.
    """
    return dtype.kind == "f" and len(per_sample_shape) in (1, 2) and per_sample_shape[-1] > 1


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float | None:
    ref = reference.astype(np.float64).ravel()
    noise = float(np.sum((ref - candidate.astype(np.float64).ravel()) ** 2))
    if noise == 0.0:
        return None
    signal = float(np.sum(ref**2))
    # A zero signal with non-zero noise is as bad as it gets; -inf is not JSON, so floor it.
    return 10.0 * math.log10(signal / noise) if signal > 0 else -300.0


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    a = reference.astype(np.float64).ravel()
    b = candidate.astype(np.float64).ravel()
    if np.array_equal(a, b):
        return 1.0  # exactly, not 1 - 2e-16 from rounding in the norms
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def top1(outputs: np.ndarray) -> np.ndarray:
    """Predicted class per row, for outputs stacked as ``[N, B, C]`` or ``[N, C]``."""
    predicted: np.ndarray = outputs.reshape(-1, outputs.shape[-1]).argmax(axis=1)
    return predicted


def compare(
    names: Sequence[str],
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    *,
    synthetic: bool = False,
    labels: np.ndarray | None = None,
) -> Fidelity:
    """Fidelity of ``candidate`` outputs against ``reference`` outputs, each stacked per output as ``[N, ...]``."""
    if len(reference) != len(candidate) or len(names) != len(reference):
        raise ValueError(f"{len(names)} names, {len(reference)} reference and {len(candidate)} candidate outputs: they must match")
    per_output: list[OutputFidelity] = []
    accuracy = reference_accuracy = None
    for name, ref, cand in zip(names, reference, candidate, strict=True):
        if ref.shape != cand.shape:
            raise ValueError(f"output {name!r}: candidate shape {list(cand.shape)} differs from the reference's {list(ref.shape)}")
        agreement = None
        if is_classifier_output(ref.shape[1:], ref.dtype):
            ref_top, cand_top = top1(ref), top1(cand)
            agreement = float(np.mean(ref_top == cand_top))
            if labels is not None and accuracy is None and len(ref_top) == len(labels):
                accuracy = float(np.mean(cand_top == labels))
                reference_accuracy = float(np.mean(ref_top == labels))
        diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
        per_output.append(
            OutputFidelity(
                name=name,
                sqnr_db=sqnr_db(ref, cand),
                cosine=cosine(ref, cand),
                max_abs_error=float(diff.max()) if diff.size else 0.0,
                top1_agreement=agreement,
            )
        )
    samples = len(reference[0]) if reference else 0
    return Fidelity(samples=samples, synthetic=synthetic, outputs=tuple(per_output), accuracy=accuracy, reference_accuracy=reference_accuracy)
