"""``TFLMTarget``: the exporter registered for ``Runtime.TFLM`` (microcontrollers).

Its artifact is the measured ``tflm-int8`` candidate's bytes as ``model.tflite`` plus
``model_data.cc``/``model_data.h`` for a firmware build; ``compile_model`` builds it with
``artifact`` (there is no export from ONNX: the bytes must be those measured). ``run`` runs TFLM on
int8 inputs (the test vectors hold int8 inputs and TFLM's outputs), ``run_reference`` LiteRT's
builtin reference kernels on the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler.inference import Feed
from edgefleet.compiler.targets import Artifact
from edgefleet.compiler.tflm import c_source, micro
from edgefleet.compiler.tflm.candidates import TFLMCandidate
from edgefleet.hardware_profiles.schema import NumberFormat, Runtime

MODEL_FILE = "model.tflite"


class TFLMTarget:
    runtime = Runtime.TFLM
    formats = frozenset({NumberFormat.INT8})

    def export(self, model: onnx.ModelProto, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> Artifact:
        raise NotImplementedError("TFLM packages are built from the measured tflm-int8 candidate (TFLMTarget.artifact)")

    def artifact(self, c: TFLMCandidate, *, package: str) -> Artifact:
        files = {MODEL_FILE: c.tflite_bytes, **c_source.source_files(c.tflite_bytes, package=package, arena_bytes=c.arena_bytes)}
        return Artifact(runtime=Runtime.TFLM, model_file=MODEL_FILE, files=files, inputs=c.inputs, outputs=c.outputs)

    def run(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        return micro.run(artifact.model_bytes, feeds)

    def run_reference(self, artifact: Artifact, feeds: Sequence[Feed]) -> list[np.ndarray]:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interpreter = Interpreter(model_content=artifact.model_bytes, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        interpreter.allocate_tensors()
        ins = {d["name"]: d["index"] for d in interpreter.get_input_details()}
        outs = [d["index"] for d in interpreter.get_output_details()]
        stacked: list[list[np.ndarray]] = [[] for _ in outs]
        for feed in feeds:
            for name, value in feed.items():
                interpreter.set_tensor(ins[name], np.ascontiguousarray(value))
            interpreter.invoke()
            for acc, index in zip(stacked, outs, strict=True):
                acc.append(interpreter.get_tensor(index).copy())
        return [np.stack(acc) for acc in stacked]
