"""Unstructured magnitude pruning and N:M sparsity, with bias correction from calibration data.

- Magnitude pruning (Han et al., 2015) zeroes the weights of smallest absolute value in Conv, Gemm
  and MatMul weights, per layer (each layer reaches ``sparsity``) or globally (one threshold over
  all layers, so layers with many small weights lose more). Per layer is the default: a global
  threshold can empty a small layer whose weights happen to be on a smaller scale.
- N:M sparsity (``n=2, m=4``: in every group of 4 consecutive weights along the reduced axis,
  only the 2 largest survive) is the pattern sparse tensor cores accelerate; ``sparsity`` is then
  implied (1 - n/m). A layer whose reduced size is not a multiple of m is skipped and logged.
- Bias correction, with calibration data: pruning shifts each layer's mean output; the shift per
  output channel, measured on calibration samples, is added to the layer's bias. Layers are
  corrected in graph order, each measured after its predecessors were corrected, so a shift is
  not compensated twice, and a correction is kept only if the model's outputs stay at least as
  faithful to the original's. A MatMul without a following bias Add is left uncorrected and logged.

Zeros only shrink the artifact once it is entropy-coded (``edgefleet.compiler.entropy``), or on a
runtime with sparse kernels; the dense model computes the same number of MACs.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx

from edgefleet.compiler import fidelity
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.errors import PassError
from edgefleet.compiler.passes import _graph
from edgefleet.compiler.passes.base import Pass, PassConfig, PassData, Transformed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneConfig(PassConfig):
    scheme: ClassVar[str] = "prune"

    sparsity: float = 0.5
    """Fraction of weights set to zero (unstructured); ignored when ``m`` > 0."""
    scope: Literal["layer", "global"] = "layer"
    n: int = 0
    """N:M pattern: keep ``n`` weights in each group of ``m``; 0 for unstructured pruning."""
    m: int = 0
    bias_correction: bool = True
    """Compensate the mean output shift on calibration data (skipped, with a note, without data)."""
    calibration_samples: int = 128
    min_params: int = 0
    """Leave layers with fewer weights than this alone."""
    op_types: tuple[str, ...] = _graph.WEIGHT_OPS

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"prune: sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"prune: scope must be 'layer' or 'global', got {self.scope!r}")
        if (self.m or self.n) and not 0 < self.n < self.m:
            raise ValueError(f"prune: an N:M pattern needs 0 < n < m, got {self.n}:{self.m}")
        if self.calibration_samples < 1:
            raise ValueError("prune: calibration_samples must be at least 1")

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"


def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """True for the weights kept: all but the ``round(sparsity * size)`` smallest in magnitude."""
    k = round(sparsity * w.size)
    keep = np.ones(w.size, bool)
    if k > 0:
        keep[np.argsort(np.abs(w), axis=None, kind="stable")[:k]] = False
    return keep.reshape(w.shape)


def nm_mask(matrix: np.ndarray, n: int, m: int) -> np.ndarray:
    """Mask for a [out, reduced] matrix keeping the ``n`` largest of every ``m`` consecutive weights in a row."""
    rows, cols = matrix.shape
    groups = np.abs(matrix).reshape(rows, cols // m, m)
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return keep.reshape(rows, cols)


class Prune(Pass[PruneConfig]):
    config_type = PruneConfig

    def requires(self, model: onnx.ModelProto, data: PassData) -> None:
        if not any(True for _ in _graph.layers(model, self.config.op_types)):
            raise PassError(
                f"found no {'/'.join(self.config.op_types)} layer with a constant float weight to prune; "
                "run prune before int8 (quantized weights sit behind DequantizeLinear)", pass_name=self.name
            )

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        cfg = self.config
        out = copy.deepcopy(model)
        notes: list[str] = []
        targets: list[_graph.Layer] = []
        seen: set[str] = set()
        for layer in _graph.layers(out, cfg.op_types):
            size = _graph.initializers(out)[layer.weight]
            count = int(np.prod(size.dims))
            if layer.weight in seen:
                continue
            if count < cfg.min_params:
                notes.append(f"skipped {layer.name}: {count} weights < min_params {cfg.min_params}")
                continue
            seen.add(layer.weight)
            targets.append(layer)
        masks: dict[str, np.ndarray] = {}
        if cfg.m:
            for layer in targets:
                w = _graph.array(out, layer.weight)
                matrix = _graph.as_matrix(layer, w)
                if matrix.shape[1] % cfg.m:
                    msg = f"skipped {layer.name}: reduced size {matrix.shape[1]} is not a multiple of {cfg.m}"
                    log.info("prune: %s", msg)
                    notes.append(msg)
                    continue
                masks[layer.weight] = _graph.from_matrix(layer, nm_mask(matrix, cfg.n, cfg.m), w.shape)
        elif cfg.scope == "global":
            weights = {layer.weight: _graph.array(out, layer.weight) for layer in targets}
            if weights:
                magnitudes = np.concatenate([np.abs(w).ravel() for w in weights.values()])
                k = round(cfg.sparsity * magnitudes.size)
                threshold = np.partition(magnitudes, k - 1)[k - 1] if k > 0 else -1.0
                masks = {name: np.abs(w) > threshold for name, w in weights.items()}
        else:
            masks = {layer.weight: magnitude_mask(_graph.array(out, layer.weight), cfg.sparsity) for layer in targets}
        pruned = [layer for layer in targets if layer.weight in masks]
        for layer in pruned:
            w = _graph.array(out, layer.weight)
            _graph.set_array(out, layer.weight, np.where(masks[layer.weight], w, 0).astype(w.dtype))
            kept = float(masks[layer.weight].mean())
            notes.append(f"{layer.name}: {1 - kept:.1%} of {w.size} weights zero ({cfg.pattern})")
        if cfg.bias_correction and pruned:
            notes += self._correct_biases(model, out, pruned, data)
        return Transformed(model=out, modified=bool(pruned), notes=tuple(notes))

    def _correct_biases(self, original: onnx.ModelProto, pruned: onnx.ModelProto, layers: list[_graph.Layer],
                        data: PassData) -> list[str]:
        if data.calibration is None or len(data.calibration) == 0 or data.calibration.synthetic:
            log.info("prune: no real calibration data; bias correction skipped")
            return ["bias correction skipped: no calibration data"]
        calib = _graph.limit(data.calibration, self.config.calibration_samples)
        outputs = [layer.node.output[0] for layer in layers]
        model_outputs = [o.name for o in original.graph.output]
        reference = _graph.run_tensors(original, outputs + model_outputs, calib)
        notes: list[str] = []
        corrected = 0
        score = _output_score(reference, pruned, model_outputs, calib)
        for layer in layers:
            slot = _graph.bias_slot(pruned, layer)
            if slot is None:
                w_out = _graph.as_matrix(layer, _graph.array(pruned, layer.weight)).shape[0]
                slot_name = _graph.ensure_bias(pruned, layer, w_out)
                if slot_name is None:
                    notes.append(f"{layer.name}: no bias to correct (a MatMul without a bias Add)")
                    continue
            else:
                slot_name = slot[0]
            tensor = layer.node.output[0]
            now = _graph.run_tensors(pruned, [tensor], calib)[tensor]
            axis = 2 if layer.node.op_type == "Conv" else now.ndim - 1
            diff = reference[tensor].astype(np.float64) - now
            shift = diff.mean(axis=tuple(a for a in range(diff.ndim) if a != axis))
            bias = _graph.array(pruned, slot_name)
            if bias.size != shift.size:
                notes.append(f"{layer.name}: bias of shape {list(bias.shape)} is not per channel; not corrected")
                continue
            _graph.set_array(pruned, slot_name, (bias.astype(np.float64) + shift.reshape(bias.shape)).astype(bias.dtype))
            # Matching each channel's mean is right while pruning keeps most of the signal; when it
            # destroys most of it (high sparsity), the per-class shifts of a classifier's logits can
            # outweigh what is left and every sample lands in one class. So a correction stays only
            # if the model's outputs on the calibration samples are at least as faithful with it.
            corrected_score = _output_score(reference, pruned, model_outputs, calib)
            if corrected_score < score:
                _graph.set_array(pruned, slot_name, bias)
                notes.append(f"{layer.name}: bias correction would lower output fidelity; not corrected")
                continue
            score = corrected_score
            corrected += 1
        notes.append(f"bias correction: {corrected} of {len(layers)} layers, on {len(calib)} calibration samples")
        return notes


def _output_score(reference: dict[str, np.ndarray], model: onnx.ModelProto, names: list[str], calib: Dataset) -> tuple[float, float]:
    """How faithful ``model``'s outputs are to the original's: (top-1 agreement, SQNR), higher is better."""
    got = _graph.run_tensors(model, names, calib)
    f = fidelity.compare(names, [reference[n] for n in names], [got[n] for n in names])
    return (f.top1_agreement if f.top1_agreement is not None else 1.0, f.sqnr_db if f.sqnr_db is not None else float("inf"))
