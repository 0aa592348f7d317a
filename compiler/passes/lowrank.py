"""Low-rank factorisation: a dense or conv weight W [K, N] replaced by two thinner layers A [K, r] B [r, N].

The truncated SVD W ~ U_r S_r V_r^T is split evenly (A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T). The
rank is the smallest that keeps ``energy`` of the squared singular values, capped by
``param_budget`` (the factors may hold at most that fraction of the layer's parameters) when set.
A layer is factorised only when r (K + N) < K N: then both its parameters and its MACs drop (for a
dense layer the two shrink by the same factor, for a k x k conv the MACs by the same factor as the
parameters); otherwise it is skipped and logged.

- MatMul x W      -> MatMul(MatMul(x, A), B)
- Gemm(x, W, C)   -> Gemm(MatMul(x, A), B, C) with the same alpha and beta
- Conv k x k (W, b) -> Conv k x k (Cin -> r filters, the strides, pads, dilations, no bias), Conv 1x1 (r -> Cout, b)
  (Jaderberg et al., 2014; K = Cin k k, the reduced axis of one filter)

With calibration data (``data_aware``, the default) a dense layer is factorised to fit its
*outputs* on that data, not its weights: the SVD is taken of L^T W, where L L^T is the second
moment of the layer's calibration inputs (plus a small ridge), which minimises ||X W - X A B|| and
makes ``energy`` the fraction of the layer's output energy kept. Trained layers whose inputs live
in a few directions (the wide digits MLP's hidden layers) then factorise to a far lower rank than
their weights' spectrum suggests: 9.9x fewer parameters at -0.67 points, where plain SVD could not
reach 1.2x. ``bias_correction`` adds each factorised layer's mean output shift on calibration data
to its bias. Conv layers use the plain SVD of their weights (their inputs would be every patch).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import helper

from edgefleet.compiler.passes import _graph
from edgefleet.compiler.passes.base import Pass, PassConfig, PassData, Transformed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LowRankConfig(PassConfig):
    scheme: ClassVar[str] = "lowrank"
    version: ClassVar[int] = 2
    search_space: ClassVar[Mapping[str, tuple[float, ...]]] = {"energy": (0.999, 0.99, 0.98)}
    """What the compile-time search tries: with data-aware ranks, 0.9 of the output energy already
    costs the wide digits MLP 30 points, 0.99 under one."""

    energy: float = 0.99
    """Fraction of sum(sigma^2) the kept singular values must hold (of the output energy, when data-aware)."""
    param_budget: float = 0.0
    """If > 0: the two factors may hold at most this fraction of the layer's parameters."""
    min_params: int = 1024
    op_types: tuple[str, ...] = ("Gemm", "MatMul", "Conv")
    data_aware: bool = True
    """With calibration data, factorise dense layers to fit their outputs on that data rather than their weights."""
    bias_correction: bool = True
    """With calibration data, add the mean output shift of each factorised layer to its bias."""
    calibration_samples: int = 512

    def __post_init__(self) -> None:
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"lowrank: energy must be in (0, 1], got {self.energy}")
        if not 0.0 <= self.param_budget < 1.0:
            raise ValueError(f"lowrank: param_budget must be in [0, 1), got {self.param_budget}")


def choose_rank(singular: np.ndarray, k: int, n: int, *, energy: float, param_budget: float) -> int:
    squared = singular.astype(np.float64) ** 2
    total = squared.sum()
    if total == 0:
        return 1
    rank = int(np.searchsorted(np.cumsum(squared) / total, energy - 1e-12) + 1)
    if param_budget > 0:
        rank = min(rank, max(1, int(param_budget * k * n / (k + n))))
    return max(1, min(rank, len(singular)))


def factors(kn: np.ndarray, x: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U, sigma, V^T) to truncate for ``x @ kn``: of ``kn`` itself, or, with calibration inputs ``x``
    [n, K], of ``L^T kn`` where ``L L^T`` is their (ridge-regularised) second moment, so that the
    truncation minimises the error of the layer's outputs on that data; U comes back un-whitened
    (``L^-T U``), so ``A = U_r sqrt(S_r)`` and ``B = sqrt(S_r) V_r^T`` apply to raw inputs either way.
    """
    if x is None:
        u, s, vt = np.linalg.svd(kn, full_matrices=False)
        return u, s, vt
    k = kn.shape[0]
    moment = x.T @ x / len(x)
    # A ridge of 1% of the mean input energy: calibration sets are often smaller than K, and an
    # input direction never seen there must not be trusted to stay zero on a device.
    moment += (0.01 * np.trace(moment) / k + 1e-12) * np.eye(k)
    chol = np.linalg.cholesky(moment)
    u, s, vt = np.linalg.svd(chol.T @ kn, full_matrices=False)
    return np.linalg.solve(chol.T, u), s, vt


class LowRank(Pass[LowRankConfig]):
    config_type = LowRankConfig

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        cfg = self.config
        out = copy.deepcopy(model)
        notes: list[str] = []
        targets = []
        for layer in _graph.layers(out, cfg.op_types):
            w = _graph.array(out, layer.weight)
            if layer.node.op_type == "Conv" and _graph.attr(layer.node, "group", 1) != 1:
                continue
            if _graph.use_count(out, layer.weight) > 1:
                notes.append(f"skipped {layer.name}: its weight is shared")
                continue
            if w.size >= cfg.min_params:
                targets.append(layer)
        calib = data.calibration if data.calibration is not None and not data.calibration.synthetic else None
        if calib is None and (cfg.data_aware or cfg.bias_correction):
            notes.append("no calibration data: plain SVD of the weights, no bias correction")
        inputs: dict[str, np.ndarray] = {}
        if calib is not None and (cfg.data_aware or cfg.bias_correction):
            dense = [t.node.input[0] for t in targets if t.node.op_type != "Conv"]
            if dense:
                inputs = _graph.run_tensors(model, dense, _graph.limit(calib, cfg.calibration_samples))
        changed = 0
        for layer in targets:
            node = layer.node
            w = _graph.array(out, layer.weight)
            kn = _graph.as_matrix(layer, w).T.astype(np.float64)  # [K, N]: x @ kn
            k, n = kn.shape
            x = inputs.get(node.input[0])
            x = x.reshape(-1, k).astype(np.float64) if x is not None else None
            u, s, vt = factors(kn, x if cfg.data_aware else None)
            r = choose_rank(s, k, n, energy=cfg.energy, param_budget=cfg.param_budget)
            if r * (k + n) >= k * n:
                msg = f"skipped {layer.name}: rank {r} of {k}x{n} would not reduce parameters or MACs"
                log.info("lowrank: %s", msg)
                notes.append(msg)
                continue
            root = np.sqrt(s[:r])
            a = u[:, :r] * root
            b = root[:, None] * vt[:r]
            kept = float((s[:r] ** 2).sum() / max((s**2).sum(), 1e-300))
            bias_note = ""
            if cfg.bias_correction and x is not None:
                shift = x.mean(axis=0) @ (kn - a @ b)
                if node.op_type == "Gemm":  # Gemm adds beta * C to alpha * x W
                    shift = shift * float(_graph.attr(node, "alpha", 1.0)) / float(_graph.attr(node, "beta", 1.0))  # type: ignore[arg-type]
                bias_note = self._correct(out, layer, shift, n)
            self._rewrite(out, layer, a.astype(w.dtype), b.astype(w.dtype))
            changed += 1
            how = "output-fitted on calibration data" if x is not None and cfg.data_aware else "of the weights"
            notes.append(f"{layer.name}: {k}x{n} -> rank {r} ({kept:.1%} energy {how}), {k * n} -> {r * (k + n)} params"
                         + bias_note)
        _graph.drop_unused_initializers(out)
        _graph.reset_shapes(out)
        return Transformed(model=out, modified=changed > 0, notes=tuple(notes))

    @staticmethod
    def _correct(model: onnx.ModelProto, layer: _graph.Layer, shift: np.ndarray, n: int) -> str:
        """Fold the mean output shift into the layer's bias (created for a Gemm without one)."""
        name = _graph.ensure_bias(model, layer, n)
        if name is None:
            return "; no bias to correct"
        bias = _graph.array(model, name)
        if bias.size != n:
            return "; bias not per output, not corrected"
        _graph.set_array(model, name, (bias.astype(np.float64) + shift.reshape(bias.shape)).astype(bias.dtype))
        return "; bias corrected"

    @staticmethod
    def _rewrite(model: onnx.ModelProto, layer: _graph.Layer, a: np.ndarray, b: np.ndarray) -> None:
        node = layer.node
        base = layer.name
        mid = f"{base}_lowrank"
        a_name, b_name = f"{base}_lowrank_a", f"{base}_lowrank_b"
        if node.op_type == "Conv":
            r = a.shape[1]
            w_shape = _graph.initializers(model)[layer.weight].dims
            # k x k Conv (Cin -> Cout) = k x k Conv (Cin -> r, the strides, pads, dilations) then 1x1 Conv (r -> Cout, bias).
            _graph.set_array(model, a_name, a.T.reshape(r, *w_shape[1:]))
            _graph.set_array(model, b_name, b.T.reshape(-1, r, 1, 1))
            keep = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            first = helper.make_node("Conv", [node.input[0], a_name], [mid], name=f"{base}_a", **keep)
            second = helper.make_node("Conv", [mid, b_name, *node.input[2:]], list(node.output), name=f"{base}_b",
                                      kernel_shape=[1, 1])
        else:
            _graph.set_array(model, a_name, a)
            _graph.set_array(model, b_name, b)
            first = helper.make_node("MatMul", [node.input[0], a_name], [mid], name=f"{base}_a")
            if node.op_type == "MatMul":
                second = helper.make_node("MatMul", [mid, b_name], list(node.output), name=f"{base}_b")
            else:
                extra = {k: _graph.attr(node, k) for k in ("alpha", "beta") if _graph.attr(node, k) is not None}
                second = helper.make_node("Gemm", [mid, b_name, *node.input[2:]], list(node.output), name=f"{base}_b",
                                          transB=0, **extra)
        nodes = list(model.graph.node)
        i = next(j for j, x in enumerate(nodes) if x is node or (x.output == node.output and x.op_type == node.op_type))
        nodes[i : i + 1] = [first, second]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
