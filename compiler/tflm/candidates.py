"""The TFLite Micro candidate: the model as full-integer int8 TFLite, run and measured in TFLM.

A microcontroller profile (``runtimes: [tflm]``) gets one candidate, ``tflm-int8``:
``tflite.convert`` then ``tflite.quantize`` in int8 with ``float_io=False``, so inputs and outputs
are int8 too (a float interface would cost QUANTIZE/DEQUANTIZE ops and float buffers in RAM; the
firmware quantizes with the scale and zero point the package's tensor specs carry). It is
measured three ways on the held-out samples:

- fidelity: TFLM's outputs, dequantized, against the original ONNX model under onnxruntime;
- agreement with LiteRT: LiteRT's int8 outputs for the same int8 inputs may differ from TFLM's by
  at most ``MAX_STEPS_FROM_LITERT`` quantization step (both implement TFLite's int8 arithmetic,
  but their requantization rounding is not always the same), or ``MAX_SOFTMAX_STEPS_FROM_LITERT``
  for an output a SOFTMAX writes; more raises ``TFLMError``;
- memory: the flash it needs is the ``.tflite``'s size (TFLM reads it in place), the RAM it needs
  is the tensor arena, measured in TFLM (``micro.measure_arena``). Both go to the planner, which
  refuses the profile when either does not fit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgefleet.agent.package import Quantization, TensorSpec
from edgefleet.compiler import fidelity
from edgefleet.compiler.inference import Feed
from edgefleet.compiler.passes import PassConfig, PassData
from edgefleet.compiler.planner import Candidate
from edgefleet.compiler.tflite.convert import convert
from edgefleet.compiler.tflite.quantize import DEFAULT_MAX_CALIBRATION_SAMPLES, quantize
from edgefleet.compiler.tflite.verify import run_tflite
from edgefleet.compiler.tflm import micro
from edgefleet.compiler.tflm.flatbuffer import inline_buffers
from edgefleet.compiler.tflm.micro import TFLMError
from edgefleet.hardware_profiles.schema import NumberFormat

log = logging.getLogger(__name__)

MAX_STEPS_FROM_LITERT = 1
"""How many quantization steps TFLM's int8 outputs may differ from LiteRT's on the same int8 inputs."""
MAX_SOFTMAX_STEPS_FROM_LITERT = 8
"""The same for an output written by SOFTMAX: the two runtimes compute it by different algorithms.
LiteRT's int8 softmax looks exp up in a table of floats; TFLM's reference kernel computes it in
gemmlowp fixed point, whose error grows with the logits' scale. With the digits MLP's logits at
0.16 per step, TFLM put 0.945 where LiteRT and the exact softmax put 0.937 (3 steps of 1/256).
8 steps (3% probability) still catches a wrong kernel or a wrong scale, which are off by far more."""


@dataclass(frozen=True)
class TFLMInt8Config(PassConfig):
    """Full-integer int8 (int8 weights, activations, inputs and outputs) for TFLite Micro."""

    scheme: ClassVar[str] = "tflm-int8"
    version: ClassVar[int] = 2  # 2: activation ranges from the min/max over all samples; vectors stored once
    number_format: ClassVar[NumberFormat] = NumberFormat.INT8
    max_calibration_samples: int = DEFAULT_MAX_CALIBRATION_SAMPLES
    # Clustered weights kept as lookup-table indices in flash, decoded into the arena at each
    # inference (``tflm.compression``): less flash for more RAM and some time.
    lut: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "runtime": "tflm", "mode": "int8", "io": "int8", "tool": "ai-edge-quantizer"}


@dataclass(frozen=True)
class TFLMCandidate:
    candidate: Candidate
    tflite_bytes: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    arena_bytes: int
    max_steps_from_litert: int
    float_size_bytes: int = 0
    """The float32 TFLite model's size, the reference for size ratios."""

    def quantize_feed(self, feed: Feed) -> dict[str, np.ndarray]:
        return {s.name: quantize_array(feed[s.name], s) for s in self.inputs}

    def dequantize(self, outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [dequantize_array(o, s) for o, s in zip(outputs, self.outputs, strict=True)]


def quantize_array(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    assert spec.quantization is not None
    q = np.round(np.asarray(x, np.float64) / spec.quantization.scale[0]) + spec.quantization.zero_point[0]
    info = np.iinfo(np.dtype(spec.dtype))
    return np.clip(q, info.min, info.max).astype(spec.dtype).reshape(np.shape(x))


def dequantize_array(q: np.ndarray, spec: TensorSpec) -> np.ndarray:
    assert spec.quantization is not None
    return ((q.astype(np.float32) - spec.quantization.zero_point[0]) * spec.quantization.scale[0]).astype(np.float32)


def tflm_candidate(fp32: Candidate, model: Any, inputs: Sequence[TensorSpec], data: PassData,
                   config: TFLMInt8Config = TFLMInt8Config()) -> TFLMCandidate:
    """Convert, quantize to full int8, and measure in TFLM (see the module docstring)."""
    assert data.reference is not None
    if data.calibration is None or data.calibration.synthetic:
        raise TFLMError(
            "a microcontroller package is full-integer int8, which needs calibration samples to fit activation "
            "ranges; pass --calibration DATA (an .npz keyed by input name, or .npy, of real inputs)"
        )
    converted = convert(model, input_shapes={s.name: list(s.shape) for s in inputs})
    q = quantize(converted.tflite_bytes, "int8", calibration=list(data.calibration.feeds()),
                 max_calibration_samples=config.max_calibration_samples, float_io=False)
    tflite = inline_buffers(q.tflite_bytes)
    in_specs, out_specs = _specs(tflite)
    partial = TFLMCandidate(fp32, tflite, in_specs, out_specs, 0, 0)
    feeds = [partial.quantize_feed(f) for f in data.evaluation.feeds()]
    got = micro.run(tflite, feeds)
    litert = run_tflite(tflite, feeds)
    softmax = _softmax_outputs(tflite)
    steps = 0
    for g, s in zip(got, out_specs, strict=True):
        off = int(np.max(np.abs(g.astype(np.int32) - litert[s.name].astype(np.int32))))
        allowed = MAX_SOFTMAX_STEPS_FROM_LITERT if s.name in softmax else MAX_STEPS_FROM_LITERT
        if off > allowed:
            raise TFLMError(f"TFLite Micro's int8 output {s.name!r} differs from LiteRT's by {off} quantization steps "
                            f"(at most {allowed} allowed): a kernel computes differently")
        steps = max(steps, off)
    arena = micro.measure_arena(tflite, feeds[0])
    f = fidelity.compare([s.name for s in out_specs], list(data.reference), partial.dequantize(got),
                         synthetic=data.evaluation.synthetic, labels=data.evaluation.labels)
    candidate = Candidate(
        scheme=config.scheme, config=config.to_dict(), number_format=config.number_format, runtime_quantization=False,
        modified=True, params=fp32.params, nonzero_params=fp32.nonzero_params, size_bytes=len(tflite),
        ram_bytes=arena, fidelity=f,
        notes=(f"ai-edge-quantizer {q.recipe}, int8 inputs and outputs; calibrated on {q.calibration_samples} samples",
               f"TFLM tensor arena {arena} bytes; TFLM vs LiteRT int8 outputs differ by at most {steps} step(s)"),
    )
    log.info("tflm-int8: %d bytes of flash, %d bytes of arena", len(tflite), arena)
    return TFLMCandidate(candidate, tflite, in_specs, out_specs, arena, steps, len(converted.tflite_bytes))


def _softmax_outputs(tflite: bytes) -> set[str]:
    """Names of the model outputs that a SOFTMAX operator writes."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    sg = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    written = {int(o) for op in sg.operators or [] if codes[op.opcodeIndex] == schema.BuiltinOperator.SOFTMAX
               for o in op.outputs}
    return {sg.tensors[i].name.decode() for i in sg.outputs if int(i) in written}


def _specs(tflite: bytes) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)

    def spec(d: dict[str, Any]) -> TensorSpec:
        qp = d["quantization_parameters"]
        quant = Quantization(scale=[float(s) for s in qp["scales"]], zero_point=[int(z) for z in qp["zero_points"]]) if len(qp["scales"]) else None
        return TensorSpec(name=d["name"], shape=[int(x) for x in d["shape"]], dtype=np.dtype(d["dtype"]).name, quantization=quant)

    return tuple(spec(d) for d in it.get_input_details()), tuple(spec(d) for d in it.get_output_details())
