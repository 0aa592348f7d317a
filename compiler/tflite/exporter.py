"""``LiteRTExporter``: turns a candidate into the ``.tflite`` a LiteRT device runs, and runs it.

It converts an fp32 ONNX candidate with ``convert`` (quantized TFLite candidates arrive already
as bytes from ``tflite.candidates``) and runs the bytes in ``ai_edge_litert``'s Interpreter:
``run`` with the default (optimised, XNNPACK) kernels a phone uses, ``run_reference`` with the
builtin reference kernels. ``targets.LiteRTTarget`` registers it for profiles whose first runtime
is LiteRT.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler.inference import Feed
from edgefleet.compiler.targets import Artifact
from edgefleet.compiler.tflite.convert import convert
from edgefleet.hardware_profiles.schema import NumberFormat, Runtime

MODEL_FILE = "model.tflite"


class LiteRTExporter:
    """The candidate converted to TFLite; test vectors come from LiteRT running those bytes."""

    runtime = Runtime.LITERT
    formats = frozenset({NumberFormat.FP32})

    def export(self, model: onnx.ModelProto, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Artifact:
        result = convert(model, input_shapes={s.name: list(s.shape) for s in inputs})
        return Artifact(
            runtime=self.runtime,
            model_file=MODEL_FILE,
            files={MODEL_FILE: result.tflite_bytes},
            inputs=tuple(result.inputs),
            outputs=tuple(result.outputs),
        )

    def run(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        return _run(artifact, feeds, reference=False)

    def run_reference(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        return _run(artifact, feeds, reference=True)


def _run(artifact: Artifact, feeds: Sequence[Feed], *, reference: bool) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
    interpreter = Interpreter(model_content=artifact.model_bytes, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    stacked: list[list[np.ndarray]] = [[] for _ in artifact.outputs]
    for feed in feeds:
        for name, value in feed.items():
            interpreter.set_tensor(inputs[name], np.ascontiguousarray(value, dtype=np.float32))
        interpreter.invoke()
        for acc, spec in zip(stacked, artifact.outputs, strict=True):
            acc.append(interpreter.get_tensor(outputs[spec.name]).copy())
    return [np.stack(acc) for acc in stacked]
