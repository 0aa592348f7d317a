"""Run a converted model in LiteRT next to the ONNX original in onnxruntime, and measure the gap.

The error of an output is ``max |tflite - onnx| / max |onnx|`` over the samples (relative to the
output's largest magnitude, so near-zero elements do not blow it up); ``Comparison.max_rel_error``
is the worst over outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler import inference
from edgefleet.compiler.inference import Feed


@dataclass(frozen=True)
class Comparison:
    samples: int
    errors: dict[str, float]
    """Output name -> max relative error."""

    @property
    def max_rel_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def random_feeds(inputs: Sequence[TensorSpec], *, samples: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {spec.name: rng.standard_normal(spec.shape).astype(spec.dtype) for spec in inputs} for _ in range(samples)
    ]


def run_tflite(tflite_bytes: bytes, feeds: Sequence[Feed]) -> dict[str, np.ndarray]:
    """Outputs by name, stacked over samples as ``[N, ...]``."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_bytes)
    interpreter.allocate_tensors()
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    results: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for feed in feeds:
        for name, value in feed.items():
            interpreter.set_tensor(inputs[name], np.ascontiguousarray(value))
        interpreter.invoke()
        for name, index in outputs.items():
            results[name].append(interpreter.get_tensor(index).copy())
    return {name: np.stack(values) for name, values in results.items()}


def compare(
    model: onnx.ModelProto, tflite_bytes: bytes, inputs: Sequence[TensorSpec], *, samples: int = 3, seed: int = 0,
    feeds: Sequence[Feed] | None = None,
) -> Comparison:
    """The max relative error of each output of ``tflite_bytes`` against ``model`` under onnxruntime."""
    feeds = list(feeds) if feeds is not None else random_feeds(inputs, samples=samples, seed=seed)
    names = [o.name for o in model.graph.output]
    reference = dict(zip(names, inference.run_model(model, feeds), strict=True))
    candidate = run_tflite(tflite_bytes, feeds)
    errors = {}
    for name in names:
        ref, got = reference[name].astype(np.float64), candidate[name].astype(np.float64)
        if ref.shape != got.shape:
            raise ValueError(f"output {name!r}: LiteRT gives shape {got.shape[1:]}, onnxruntime {ref.shape[1:]}")
        scale = max(float(np.max(np.abs(ref))), 1e-12)
        errors[name] = float(np.max(np.abs(ref - got)) / scale) if ref.size else 0.0
    return Comparison(samples=len(feeds), errors=errors)
