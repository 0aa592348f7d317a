"""Mixed precision: int8 everywhere except the layers that cost the most fidelity, which stay float.

Accuracy-aware tuning in the manner of Intel Neural Compressor and NNCF, on calibration data:

1. Sensitivity: each Conv, Gemm and MatMul is quantized *alone* (onnxruntime's ``quantize_static``
   with ``nodes_to_quantize=[layer]``) and the model's outputs are compared with the float model's
   (SQNR, top-1 agreement). The lower the SQNR, the more sensitive the layer.
2. Tuning: the whole model is quantized; while it misses the fidelity ``budget``, the most
   sensitive layer still in int8 is added to ``nodes_to_exclude`` (it keeps float weights and
   float inputs) and the model is quantized again, one layer at a time.
3. At most ``max_float_fraction`` of the layers may stay float (a model mostly in float is no
   longer compressed). If the budget is still missed there, the pass returns the best model it
   measured and its notes say plainly that the budget was not met, by how much, and what to try.

Decisions are taken on the calibration samples (the pass's report then measures the result on the
held-out evaluation samples, which tuning never saw). The quantization itself is onnxruntime's;
only the choice of ``nodes_to_exclude`` is ours. int16 activations for the sensitive layers
(onnxruntime's 16-bit QDQ) are not offered: the device runtimes' int8 kernels do not take them, so
such a layer would fall back to float there anyway.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat, quantize_static

from edgefleet.compiler import fidelity, inference
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.errors import PassError
from edgefleet.compiler.passes import _graph
from edgefleet.compiler.passes.base import Pass, PassConfig, PassData, Transformed

# The int8 pass's file plumbing (shape-inference pre-processing, the calibration reader), shared
# so that mixed precision quantizes exactly as int8-static does, minus the excluded nodes.
from edgefleet.compiler.passes.quantize import (
    _CALIBRATION_METHODS,
    _folded_note,
    _prepared,
    _Reader,
    _without_batchnorm,
)
from edgefleet.hardware_profiles.schema import NumberFormat

log = logging.getLogger(__name__)

_METRICS = ("sqnr", "agreement")


@dataclass(frozen=True)
class MixedPrecisionConfig(PassConfig):
    scheme: ClassVar[str] = "mixed-int8"
    version: ClassVar[int] = 2  # 2: BatchNormalization folded before quantizing
    number_format: ClassVar[NumberFormat] = NumberFormat.INT8

    budget: float = 30.0
    """The fidelity to hold on calibration data: the outputs' SQNR in dB (``metric=sqnr``), or the
    fraction of top-1 predictions unchanged (``metric=agreement``, e.g. 0.99)."""
    metric: Literal["sqnr", "agreement"] = "sqnr"
    max_float_fraction: float = 0.5
    """At most this fraction of the Conv/Gemm/MatMul layers may stay float."""
    per_channel: bool = True
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = 256
    """Samples used both to fit activation ranges and to measure fidelity while tuning."""

    def __post_init__(self) -> None:
        if self.metric not in _METRICS:
            raise ValueError(f"mixed-int8: metric must be one of {', '.join(_METRICS)}, got {self.metric!r}")
        if self.metric == "agreement" and not 0.0 < self.budget <= 1.0:
            raise ValueError(f"mixed-int8: an agreement budget is a fraction in (0, 1], got {self.budget}")
        if not 0.0 <= self.max_float_fraction <= 1.0:
            raise ValueError(f"mixed-int8: max_float_fraction must be in [0, 1], got {self.max_float_fraction}")
        if self.calibrate_method not in _CALIBRATION_METHODS:
            raise ValueError(f"mixed-int8: calibrate_method must be one of {sorted(_CALIBRATION_METHODS)}")
        if self.calibration_samples < 1:
            raise ValueError("mixed-int8: calibration_samples must be at least 1")


@dataclass(frozen=True)
class Sensitivity:
    """The model's fidelity with only ``layer`` quantized."""

    layer: str
    op_type: str
    sqnr_db: float | None
    top1_agreement: float | None


@dataclass(frozen=True)
class Step:
    """One tuning step: the layers kept float and the fidelity of the resulting model."""

    float_layers: tuple[str, ...]
    sqnr_db: float | None
    top1_agreement: float | None
    meets_budget: bool


@dataclass(frozen=True)
class Tuning:
    sensitivity: tuple[Sensitivity, ...]
    steps: tuple[Step, ...]
    chosen: int
    """Index in ``steps`` of the model returned."""

    @property
    def met(self) -> bool:
        return self.steps[self.chosen].meets_budget


def _score(f: fidelity.Fidelity, metric: str) -> float:
    """Higher is better; an exact match (SQNR ``None``) is infinitely good."""
    value = f.sqnr_db if metric == "sqnr" else f.top1_agreement
    if metric == "agreement" and value is None:
        raise PassError("metric=agreement needs a classifier output ([B, C] scores); use metric=sqnr", pass_name="mixed-int8")
    return float("inf") if value is None else float(value)


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which every node has a unique name (``nodes_to_exclude`` refers to nodes by name)."""
    out = copy.deepcopy(model)
    seen: set[str] = set()
    for i, node in enumerate(out.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return out


class MixedPrecision(Pass[MixedPrecisionConfig]):
    config_type = MixedPrecisionConfig

    def requires(self, model: onnx.ModelProto, data: PassData) -> None:
        if data.calibration is None or len(data.calibration) == 0 or data.calibration.synthetic:
            raise PassError("needs real calibration samples to fit activation ranges and measure each layer's "
                            "sensitivity; pass --data", pass_name=self.name)
        if not any(True for _ in _graph.layers(model)):
            raise PassError("found no Conv/Gemm/MatMul with a constant float weight; run mixed-int8 on a float model",
                            pass_name=self.name)

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        assert data.calibration is not None  # checked by requires()
        # As in int8-static: an unfolded BatchNormalization would run in float between extra Q/DQ nodes.
        # Folding keeps every Conv's name, which is what the sensitivity steps refer to.
        without_bn, folded = _without_batchnorm(model)
        named = _named(without_bn)
        calib = _graph.limit(data.calibration, self.config.calibration_samples)
        tuning, quantized = self.tune(named, calib)
        return Transformed(model=quantized, modified=True, notes=(*_folded_note(folded), *self._notes(tuning, len(calib))))

    def tune(self, model: onnx.ModelProto, calib: Dataset) -> tuple[Tuning, onnx.ModelProto]:
        """Sensitivity analysis, then greedy exclusion; ``model``'s nodes must be uniquely named."""
        cfg = self.config
        feeds = list(calib.feeds())
        names = [o.name for o in model.graph.output]
        reference = inference.run_model(model, feeds)

        def measure(candidate: onnx.ModelProto) -> fidelity.Fidelity:
            return fidelity.compare(names, reference, inference.run_model(candidate, feeds), synthetic=False)

        layers = [layer.node for layer in _graph.layers(model)]
        sensitivity = []
        for node in layers:
            f = measure(self._quantize(model, calib, only=[node.name]))
            sensitivity.append(Sensitivity(node.name, node.op_type, f.sqnr_db, f.top1_agreement))
        order = sorted(sensitivity, key=lambda s: float("inf") if s.sqnr_db is None else s.sqnr_db)
        limit = int(np.floor(cfg.max_float_fraction * len(layers)))
        steps: list[Step] = []
        models: list[onnx.ModelProto] = []
        excluded: list[str] = []
        while True:
            candidate = self._quantize(model, calib, exclude=excluded)
            f = measure(candidate)
            ok = _score(f, cfg.metric) >= cfg.budget
            steps.append(Step(tuple(excluded), f.sqnr_db, f.top1_agreement, ok))
            models.append(candidate)
            log.info("mixed-int8: %d float layers: SQNR %s dB, agreement %s", len(excluded), f.sqnr_db, f.top1_agreement)
            if ok or len(excluded) >= limit:
                break
            excluded.append(order[len(excluded)].layer)
        if steps[-1].meets_budget:
            chosen = len(steps) - 1
        else:
            chosen = max(range(len(steps)), key=lambda i: _score_step(steps[i], cfg.metric))
        return Tuning(tuple(sensitivity), tuple(steps), chosen), models[chosen]

    def _quantize(self, model: onnx.ModelProto, calib: Dataset, *, only: list[str] | None = None,
                  exclude: list[str] | None = None) -> onnx.ModelProto:
        cfg = self.config
        with tempfile.TemporaryDirectory(prefix="edgefleet-mixed-") as tmp:
            workdir = Path(tmp)
            out = workdir / "quantized.onnx"
            quantize_static(
                str(_prepared(model, workdir)), str(out), _Reader(calib, len(calib)),
                quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                calibrate_method=_CALIBRATION_METHODS[cfg.calibrate_method],
                nodes_to_quantize=only, nodes_to_exclude=exclude or None,
            )
            return onnx.load(str(out))

    def _notes(self, tuning: Tuning, samples: int) -> tuple[str, ...]:
        cfg = self.config
        unit = " dB" if cfg.metric == "sqnr" else ""
        notes = [f"sensitivity on {samples} calibration samples, each layer int8 alone (SQNR dB, top-1 agreement):"]
        for s in sorted(tuning.sensitivity, key=lambda s: float("inf") if s.sqnr_db is None else s.sqnr_db):
            sqnr = "exact" if s.sqnr_db is None else f"{s.sqnr_db:.1f}"
            agree = "-" if s.top1_agreement is None else f"{s.top1_agreement:.2%}"
            notes.append(f"  {s.layer} ({s.op_type}): {sqnr}, {agree}")
        notes.append(f"tuning on the same samples, the most sensitive layers kept float one at a time ({cfg.metric}):")
        for step in tuning.steps:
            value = step.sqnr_db if cfg.metric == "sqnr" else step.top1_agreement
            shown = "exact" if value is None else (f"{value:.1f}" if cfg.metric == "sqnr" else f"{value:.2%}")
            notes.append(f"  {len(step.float_layers)} float layer(s) {list(step.float_layers)}: {cfg.metric} {shown}{unit}"
                         f"{' (meets the budget)' if step.meets_budget else ''}")
        chosen = tuning.steps[tuning.chosen]
        if tuning.met:
            notes.append(f"budget {cfg.metric} >= {cfg.budget}{unit} holds with {len(chosen.float_layers)} of "
                         f"{len(tuning.sensitivity)} layers float: {', '.join(chosen.float_layers) or 'none'}")
        else:
            best = _score_step(chosen, cfg.metric)
            notes.append(f"BUDGET NOT MET: {cfg.metric} >= {cfg.budget}{unit} was not reached with up to "
                         f"{len(tuning.steps) - 1} float layers (max_float_fraction={cfg.max_float_fraction}); returning the "
                         f"best measured ({best:.4g}{unit}, float: {', '.join(chosen.float_layers) or 'none'}); try a lower "
                         "budget, a higher max_float_fraction, or calibrate_method=entropy")
            log.warning("mixed-int8: %s", notes[-1])
        return tuple(notes)


def _score_step(step: Step, metric: str) -> float:
    value = step.sqnr_db if metric == "sqnr" else step.top1_agreement
    return float("inf") if value is None else float(value)
