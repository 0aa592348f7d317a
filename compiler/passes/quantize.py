"""Int8 quantization with onnxruntime's quantizer: static (calibrated) and dynamic (weights only ahead of time).

- ``StaticInt8``: weights and activations int8, activation ranges fitted on calibration samples,
  written as QDQ (QuantizeLinear/DequantizeLinear pairs around float operators), which every
  onnxruntime execution provider understands and fuses into int8 kernels. Weights are quantized
  per output channel: one scale per row costs a few hundred bytes and recovers most of the error
  a single per-tensor scale causes when channels have different ranges. Activations are uint8 by
  default: onnxruntime's x86 int8 kernels take uint8 activations (U8S8), and its rewrite of int8
  activations into uint8 skips a tensor read by more than one operator (a residual input, a SiLU's
  Conv output), leaving the Conv and its readers in float between QuantizeLinear/DequantizeLinear
  pairs. With int8 activations a model with skip connections or SiLU ran 2-3x slower than fp32
  on this host; with uint8, within 1.2x (docs/benchmarks.md). ARM builds of onnxruntime run both.
- ``DynamicInt8``: weights int8 ahead of time, activations quantized on every inference from
  their observed range. Needs no calibration data, so it is always a candidate, but it covers
  fewer operators (MatMul, Gemm, Conv, Gather, Attention, LSTM) and spends work on each call.

onnxruntime's quantizer works on files, so each pass runs in its own temporary directory.
Before quantizing, ONNX shape inference runs (onnxruntime's ``quant_pre_process``) with two of its
steps off. Symbolic shape inference needs sympy, and our inputs are static anyway. The graph
optimiser fuses MatMul+Add into Gemm, and per-channel QDQ on Gemm made the int8 digits MLP 11%
larger (26.4 KB instead of 23.7 KB), so it stays off. Its other gain for quantization, folding a
BatchNormalization into the Conv before it, we do ourselves (``compiler.batchnorm``) before
quantizing: left unfolded, onnxruntime runs the BatchNormalization in float between an extra
DequantizeLinear/QuantizeLinear pair and two layout Transposes, which made int8 models with
BatchNormalization slower than fp32. Exporters in training mode, and our model zoo, leave it unfolded.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from edgefleet.compiler.batchnorm import fold_batchnorm
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.errors import PassError
from edgefleet.compiler.inference import Feed
from edgefleet.compiler.passes._graph import (
    drop_unused_initializers,
    reset_shapes,
    set_array,
)
from edgefleet.compiler.passes.base import Pass, PassConfig, PassData, Transformed
from edgefleet.hardware_profiles.schema import NumberFormat

log = logging.getLogger(__name__)

_QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
_CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_INT8_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}


@dataclass(frozen=True)
class StaticInt8Config(PassConfig):
    scheme: ClassVar[str] = "int8-static"
    version: ClassVar[int] = 2  # 2: BatchNormalization folded before quantizing; uint8 activations by default
    number_format: ClassVar[NumberFormat] = NumberFormat.INT8

    format: Literal["qdq"] = "qdq"
    per_channel: bool = True
    activations: Literal["int8", "uint8"] = "uint8"
    weights: Literal["int8", "uint8"] = "int8"
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    max_calibration_samples: int = 512
    exclude_op_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_choice("activations", self.activations, _QUANT_TYPES)
        _check_choice("weights", self.weights, _QUANT_TYPES)
        _check_choice("calibrate_method", self.calibrate_method, _CALIBRATION_METHODS)
        if self.format != "qdq":
            raise ValueError(f"int8-static: format {self.format!r} is not supported; use 'qdq'")
        if self.max_calibration_samples < 1:
            raise ValueError(f"int8-static: max_calibration_samples must be at least 1, got {self.max_calibration_samples}")


@dataclass(frozen=True)
class DynamicInt8Config(PassConfig):
    scheme: ClassVar[str] = "int8-dynamic"
    version: ClassVar[int] = 2  # 2: BatchNormalization folded before quantizing
    number_format: ClassVar[NumberFormat] = NumberFormat.INT8
    runtime_quantization: ClassVar[bool] = True

    per_channel: bool = False
    weights: Literal["int8", "uint8"] = "int8"

    def __post_init__(self) -> None:
        _check_choice("weights", self.weights, _QUANT_TYPES)


def _check_choice(field: str, value: str, choices: dict[str, object]) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not one of {sorted(choices)}")


class _Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
    """Feeds calibration samples to onnxruntime's calibrator, one at a time."""

    def __init__(self, data: Dataset, limit: int) -> None:
        self._feeds: Iterator[Feed] = data.take(range(min(limit, len(data)))).feeds()

    def get_next(self) -> dict[str, object] | None:
        feed = next(self._feeds, None)
        return None if feed is None else dict(feed)


def _without_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with each BatchNormalization after a Conv folded into the Conv's weights and bias."""
    model = copy.deepcopy(model)
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    notes = fold_batchnorm(model, constants)
    if notes:
        for name in {i for node in model.graph.node for i in node.input} - {i.name for i in model.graph.initializer}:
            if name in constants:
                set_array(model, name, constants[name])
        drop_unused_initializers(model)
        reset_shapes(model)
    return model, notes


def _prepared(model: onnx.ModelProto, workdir: Path) -> Path:
    src, pre = workdir / "input.onnx", workdir / "prepared.onnx"
    onnx.save(model, src)
    quant_pre_process(str(src), str(pre), skip_optimization=True, skip_symbolic_shape=True)
    return pre


def _folded_note(notes: list[str]) -> tuple[str, ...]:
    return (f"folded {len(notes)} BatchNormalization(s) into the Conv before each, so none runs in float",) if notes else ()


class StaticInt8(Pass[StaticInt8Config]):
    config_type = StaticInt8Config

    def requires(self, model: onnx.ModelProto, data: PassData) -> None:
        if data.calibration is None or len(data.calibration) == 0:
            raise PassError("needs calibration samples to fit activation ranges; pass --calibration DATA", pass_name=self.name)
        if data.calibration.synthetic:
            raise PassError("refuses random calibration samples: they give meaningless activation ranges", pass_name=self.name)

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        assert data.calibration is not None  # checked by requires()
        cfg = self.config
        present = {n.op_type for n in model.graph.node}
        excluded = set(cfg.exclude_op_types)
        with tempfile.TemporaryDirectory(prefix="edgefleet-int8-static-") as tmp:
            workdir = Path(tmp)
            out = workdir / "quantized.onnx"
            without_bn, folded = _without_batchnorm(model)
            quantize_static(
                str(_prepared(without_bn, workdir)),
                str(out),
                _Reader(data.calibration, cfg.max_calibration_samples),
                quant_format=QuantFormat.QDQ,
                per_channel=cfg.per_channel,
                activation_type=_QUANT_TYPES[cfg.activations],
                weight_type=_QUANT_TYPES[cfg.weights],
                calibrate_method=_CALIBRATION_METHODS[cfg.calibrate_method],
                op_types_to_quantize=sorted(present - excluded) if excluded else None,
            )
            quantized = onnx.load(str(out))
        compute = [n for n in quantized.graph.node if n.op_type not in _QDQ_OPS]
        dequantized = {o for n in quantized.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        covered = [n for n in compute if any(i in dequantized for i in n.input)]
        used = min(cfg.max_calibration_samples, len(data.calibration))
        notes = (
            *_folded_note(folded),
            f"calibrated on {used} samples from {data.calibration.source}",
            (f"{len(covered)} of {len(compute)} operators take int8 inputs "
             f"({', '.join(sorted({n.op_type for n in covered})) or 'none'})"),
        )
        return Transformed(model=quantized, modified=bool(covered), notes=notes)


class DynamicInt8(Pass[DynamicInt8Config]):
    config_type = DynamicInt8Config

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        cfg = self.config
        with tempfile.TemporaryDirectory(prefix="edgefleet-int8-dynamic-") as tmp:
            workdir = Path(tmp)
            out = workdir / "quantized.onnx"
            without_bn, folded = _without_batchnorm(model)
            quantize_dynamic(str(_prepared(without_bn, workdir)), str(out), per_channel=cfg.per_channel,
                             weight_type=_QUANT_TYPES[cfg.weights])
            quantized = onnx.load(str(out))
        # Dynamic quantization changes the model exactly when it stores some weight as 8-bit integers.
        int8_weights = [i.name for i in quantized.graph.initializer if i.data_type in _INT8_TYPES and len(i.dims) > 0]
        before = {n.op_type for n in model.graph.node}
        new_ops = sorted({n.op_type for n in quantized.graph.node} - before)
        if int8_weights:
            note = f"{len(int8_weights)} weight tensors stored as {cfg.weights}; new operators: {', '.join(new_ops) or 'none'}"
        else:
            note = (
                "nothing to quantize: onnxruntime's dynamic quantization covers MatMul, Gemm, Conv, Gather, Attention "
                f"and LSTM; the model has {', '.join(sorted(before))}"
            )
            log.info("int8-dynamic: %s", note)
        return Transformed(model=quantized, modified=bool(int8_weights), notes=(*_folded_note(folded), note))
