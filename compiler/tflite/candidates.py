"""LiteRT candidates for ``compile_model``: the model converted to TFLite, then quantized, each measured in LiteRT.

A profile served by LiteRT (phones: ``runtimes: [litert, ...]``) is judged on these instead of the
ONNX candidates, because what ships is a ``.tflite`` and its fidelity must be that of those bytes:

    fp32                  ``convert(model)``: the float32 TFLite model (the reference for size ratios)
    litert-fp16           float16 weights + DEQUANTIZE (GPU delegates compute in fp16)
    litert-int8-dynamic   int8 weights, activations quantized per call (no data needed)
    litert-int8-static    int8 weights and activations, calibrated (needs calibration data)

Quantization is ``tflite.quantize`` (ai-edge-quantizer). Each candidate runs in LiteRT's
Interpreter (default kernels, XNNPACK on a CPU) on the same held-out samples as the ONNX
candidates, and is compared with the original ONNX model's outputs under onnxruntime, so the
figures of both families are against the same reference.

A config here is a ``PassConfig`` (frozen, serialisable, what the manifest records under
``compression``) but not an ONNX pass: ``passes.PASSES`` does not list it, and onnxruntime
targets never see it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler.passes import Fp32Config, PassConfig, PassData
from edgefleet.compiler.planner import Candidate
from edgefleet.compiler.tflite.convert import convert
from edgefleet.compiler.tflite.errors import ConversionError
from edgefleet.compiler.tflite.quantize import (
    DEFAULT_MAX_CALIBRATION_SAMPLES,
    Mode,
    QuantizationError,
    evaluate,
    quantize,
)
from edgefleet.hardware_profiles.schema import NumberFormat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiteRTConfig(PassConfig):
    """A LiteRT quantization candidate: ``mode`` for ``tflite.quantize`` on the converted fp32 model."""

    mode: ClassVar[Mode]
    tool: ClassVar[str] = "ai-edge-quantizer"
    version: ClassVar[int] = 2  # 2: activation ranges from the min/max over all samples; vectors stored once

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "runtime": "litert", "mode": self.mode.value, "tool": self.tool}


@dataclass(frozen=True)
class LiteRTFp16Config(LiteRTConfig):
    scheme: ClassVar[str] = "litert-fp16"
    number_format: ClassVar[NumberFormat] = NumberFormat.FP16
    mode: ClassVar[Mode] = Mode.FP16


@dataclass(frozen=True)
class LiteRTDynamicInt8Config(LiteRTConfig):
    scheme: ClassVar[str] = "litert-int8-dynamic"
    number_format: ClassVar[NumberFormat] = NumberFormat.INT8
    runtime_quantization: ClassVar[bool] = True
    mode: ClassVar[Mode] = Mode.DYNAMIC


@dataclass(frozen=True)
class LiteRTStaticInt8Config(LiteRTConfig):
    scheme: ClassVar[str] = "litert-int8-static"
    number_format: ClassVar[NumberFormat] = NumberFormat.INT8
    mode: ClassVar[Mode] = Mode.INT8

    max_calibration_samples: int = DEFAULT_MAX_CALIBRATION_SAMPLES

    def __post_init__(self) -> None:
        if self.max_calibration_samples < 1:
            raise ValueError(f"{self.scheme}: max_calibration_samples must be at least 1, got {self.max_calibration_samples}")


DEFAULT_LITERT_CANDIDATES: tuple[LiteRTConfig, ...] = (LiteRTFp16Config(), LiteRTDynamicInt8Config(), LiteRTStaticInt8Config())


@dataclass(frozen=True)
class LiteRTCandidate:
    """A measured candidate and the TFLite bytes it was measured on (what the package ships)."""

    candidate: Candidate
    tflite_bytes: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def litert_candidates(
    fp32: Candidate, model: Any, inputs: Sequence[TensorSpec], data: PassData, configs: Sequence[PassConfig],
) -> tuple[dict[str, LiteRTCandidate], dict[str, str]]:
    """Convert ``model`` (the loaded ONNX original), quantize it per config, measure each in LiteRT.

    ``fp32`` is the ONNX reference candidate: its parameter count and activation-memory estimate
    carry over (conversion changes neither). Returns the candidates by scheme and the schemes
    skipped with the reason. A model the converter cannot take raises ``ConversionError``.
    """
    assert data.reference is not None, "the ONNX reference outputs are computed once by compile_model"
    converted = convert(model, input_shapes={s.name: list(s.shape) for s in inputs})
    feeds = list(data.evaluation.feeds())
    names = [s.name for s in converted.outputs]
    held_out = data.evaluation

    def measure(config: PassConfig, tflite: bytes, notes: tuple[str, ...]) -> LiteRTCandidate:
        f = evaluate(list(data.reference or ()), tflite, feeds, names, synthetic=held_out.synthetic, labels=held_out.labels)
        candidate = Candidate(
            scheme=config.scheme, config=config.to_dict(), number_format=config.number_format,
            runtime_quantization=config.runtime_quantization, modified=not isinstance(config, Fp32Config),
            params=fp32.params, nonzero_params=fp32.nonzero_params, size_bytes=len(tflite),
            # Activations are as large as in onnxruntime; only the model's own bytes differ.
            ram_bytes=max(0, fp32.ram_bytes - fp32.size_bytes) + len(tflite),
            fidelity=f, notes=notes,
        )
        return LiteRTCandidate(candidate, tflite, tuple(converted.inputs), tuple(converted.outputs))

    out = {Fp32Config.scheme: measure(Fp32Config(), converted.tflite_bytes, ("converted to TFLite (float32)", *converted.report.notes))}
    skipped: dict[str, str] = {}
    for config in configs:
        if not isinstance(config, LiteRTConfig):
            continue
        calibration = None
        if config.mode.needs_calibration:
            if data.calibration is None or data.calibration.synthetic:
                skipped[config.scheme] = "no calibration data"
                continue
            calibration = list(data.calibration.feeds())
        limit = getattr(config, "max_calibration_samples", DEFAULT_MAX_CALIBRATION_SAMPLES)
        try:
            q = quantize(converted.tflite_bytes, config.mode, calibration=calibration, max_calibration_samples=limit)
        except (QuantizationError, ConversionError) as exc:
            # One mode failing on this model should not stop the others; the report says why.
            log.warning("%s: %s", config.scheme, exc)
            skipped[config.scheme] = str(exc)
            continue
        notes = (f"ai-edge-quantizer recipe {q.recipe}; constants {q.float_constant_bytes} -> {q.constant_bytes} bytes", *q.notes)
        out[config.scheme] = measure(config, q.tflite_bytes, notes)
    return out, skipped
