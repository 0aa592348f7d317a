"""Targets: how a chosen candidate becomes the bytes a device's runtime loads.

Candidates are ONNX models. An ``Exporter`` turns one into the package's model file and tensor
specs for one runtime, and runs the exported model so test vectors come from the same bytes the
device gets. ``EXPORTERS`` maps a runtime name to its exporter; a profile is served by the first
of its runtimes (in the profile's order of preference) that has one.

Three runtimes are implemented:

- onnxruntime: the exported file is the ONNX candidate itself (fp32, int8 QDQ, dynamic int8).
- LiteRT (``LiteRTTarget``): a ``.tflite`` in fp32, fp16 or int8. Its candidates
  are TFLite models made and measured in LiteRT by ``tflite.candidates`` (ai-edge-quantizer for
  the quantized ones); ``compile_model`` packages those bytes and the target runs them for the
  test vectors. Phones list litert first and get it; Raspberry Pi and generic Linux profiles list
  onnxruntime first and stay on it (see docs/compiler.md).

- TFLite Micro (``TFLMTarget``, microcontrollers): a full-integer int8 ``.tflite`` with int8
  inputs and outputs, plus ``model_data.cc``/``.h`` for the firmware. Its one candidate,
  ``tflm-int8``, is made and measured (fidelity, tensor arena, flash) by ``tflm.candidates``;
  ``compile_model`` packages those bytes (see docs/tflm.md).

A profile whose runtimes have no exporter fails with ``TargetNotImplemented`` before any work is done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnx

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler import inference
from edgefleet.compiler.errors import TargetNotImplemented
from edgefleet.compiler.inference import Feed
from edgefleet.hardware_profiles.schema import HardwareProfile, NumberFormat, Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artifact:
    """What goes into a package for one runtime: ``files[model_file]`` is the model."""

    runtime: Runtime
    model_file: str
    files: dict[str, bytes]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def model_bytes(self) -> bytes:
        return self.files[self.model_file]


class Exporter(Protocol):
    runtime: Runtime
    formats: frozenset[NumberFormat]
    """Number formats this exporter can carry to its runtime."""

    def export(self, model: onnx.ModelProto, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Artifact: ...

    def run(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        """Run the exported model as the device will; outputs stacked per output as ``[N, ...]``."""
        ...

    def run_reference(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        """Run it with the runtime's unoptimised reference arithmetic, independent of this CPU's kernels.

        The gap between ``run`` and this bounds how differently another CPU's kernels may round.
        """
        ...


class OnnxRuntimeExporter:
    """The candidate model, serialised as is: onnxruntime on the device reads the same ONNX."""

    runtime = Runtime.ONNXRUNTIME
    formats = frozenset({NumberFormat.FP32, NumberFormat.INT8})

    def export(self, model: onnx.ModelProto, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Artifact:
        # QDQ and dynamic int8 models keep float inputs and outputs, so the original specs hold.
        return Artifact(
            runtime=self.runtime,
            model_file="model.onnx",
            files={"model.onnx": model.SerializeToString()},
            inputs=tuple(inputs),
            outputs=tuple(outputs),
        )

    def run(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        return inference.run_model(onnx.load_model_from_string(artifact.model_bytes), feeds)

    def run_reference(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        # Without graph optimisations a QDQ model is not fused into int8 kernels: each
        # Quantize/DequantizeLinear runs in float, which is the scheme's exact arithmetic.
        return inference.run_model(onnx.load_model_from_string(artifact.model_bytes), feeds, optimize=False)


class LiteRTTarget:
    """A ``.tflite`` for LiteRT in fp32, fp16 or int8; the work is ``tflite.exporter.LiteRTExporter``'s.

    Quantized candidates arrive as TFLite bytes already (``tflite.candidates``), and quantized
    models keep float32 inputs and outputs, so the package's tensor specs are the fp32 model's.
    ``export`` converts an fp32 ONNX candidate; ``run`` uses LiteRT's default kernels (XNNPACK on
    a CPU), ``run_reference`` its builtin reference kernels. The tflite package is imported on
    first use: it builds on this module's ``Artifact``.
    """

    runtime = Runtime.LITERT
    formats = frozenset({NumberFormat.FP32, NumberFormat.FP16, NumberFormat.INT8})

    def export(self, model: onnx.ModelProto, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Artifact:
        from edgefleet.compiler.tflite.exporter import LiteRTExporter

        return LiteRTExporter().export(model, inputs, outputs)

    def run(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        from edgefleet.compiler.tflite.exporter import LiteRTExporter

        return LiteRTExporter().run(artifact, feeds)

    def run_reference(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        from edgefleet.compiler.tflite.exporter import LiteRTExporter

        return LiteRTExporter().run_reference(artifact, feeds)


class TFLMTarget:
    """Full-integer int8 TFLite for TFLite Micro; the work is ``tflm.target.TFLMTarget``'s (imported on first use).

    There is no ``export`` from ONNX: the package carries the measured ``tflm-int8`` candidate's
    bytes (``compile_model`` calls ``tflm.target.TFLMTarget.artifact``). ``run`` runs TFLM on int8
    inputs, ``run_reference`` LiteRT's builtin reference kernels.
    """

    runtime = Runtime.TFLM
    formats = frozenset({NumberFormat.INT8})

    def export(self, model: onnx.ModelProto, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Artifact:
        from edgefleet.compiler.tflm.target import TFLMTarget as Impl

        return Impl().export(model, inputs, outputs)

    def run(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        from edgefleet.compiler.tflm.target import TFLMTarget as Impl

        return Impl().run(artifact, feeds)

    def run_reference(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        from edgefleet.compiler.tflm.target import TFLMTarget as Impl

        return Impl().run_reference(artifact, feeds)


EXPORTERS: dict[Runtime, Exporter] = {
    Runtime.ONNXRUNTIME: OnnxRuntimeExporter(), Runtime.LITERT: LiteRTTarget(), Runtime.TFLM: TFLMTarget(),
}

_NEEDS = {
    Runtime.LITERT: "a TFLite target (LiteRT)",
    Runtime.TFLM: "a TFLite Micro target",
}


def exporter_for(profile: HardwareProfile) -> tuple[Exporter, tuple[str, ...]]:
    """The exporter for the first of the profile's runtimes that has one, and notes on runtimes passed over."""
    notes: list[str] = []
    for runtime in profile.runtimes:
        exporter = EXPORTERS.get(runtime)
        if exporter is not None:
            return exporter, tuple(notes)
        notes.append(f"{profile.name} prefers {runtime.value}, which has no exporter yet; packaging for the next runtime it lists")
    runtimes = [r.value for r in profile.runtimes]
    needs = " or ".join(dict.fromkeys(_NEEDS.get(r, f"a {r.value} target") for r in profile.runtimes))
    raise TargetNotImplemented(
        f"profile {profile.name!r} runs {runtimes}: it needs {needs}, which is not implemented yet "
        f"(the compiler exports for {', '.join(r.value for r in EXPORTERS)} only); "
        "choose a profile whose runtimes include onnxruntime (`edgefleet profiles` lists them)",
        profile=profile.name,
        runtimes=runtimes,
    )
