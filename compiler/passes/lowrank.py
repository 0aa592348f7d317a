"""Low-rank factorisation: a dense or 1x1-conv weight W [K, N] replaced by two thinner layers A [K, r] B [r, N].

The truncated SVD W ~ U_r S_r V_r^T is split evenly (A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T). The
rank is the smallest that keeps ``energy`` of the squared singular values, capped by
``param_budget`` (the factors may hold at most that fraction of the layer's parameters) when set.
A layer is factorised only when r (K + N) < K N: then both its parameters and its MACs drop (for a
dense layer and a 1x1 conv the two shrink by the same factor); otherwise it is skipped and logged.

- MatMul x W      -> MatMul(MatMul(x, A), B)
- Gemm(x, W, C)   -> Gemm(MatMul(x, A), B, C) with the same alpha and beta
- Conv 1x1 (W, b) -> Conv 1x1 (Cin -> r, the strides and pads, no bias), Conv 1x1 (r -> Cout, b)

Without fine-tuning the approximation error is what the dropped singular values carry; the
report's fidelity shows it.
"""

from __future__ import annotations

import copy
import logging
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

    energy: float = 0.9
    """Fraction of sum(sigma^2) the kept singular values must hold."""
    param_budget: float = 0.0
    """If > 0: the two factors may hold at most this fraction of the layer's parameters."""
    min_params: int = 1024
    op_types: tuple[str, ...] = ("Gemm", "MatMul", "Conv")

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


class LowRank(Pass[LowRankConfig]):
    config_type = LowRankConfig

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        cfg = self.config
        out = copy.deepcopy(model)
        notes: list[str] = []
        changed = 0
        for layer in list(_graph.layers(out, cfg.op_types)):
            node = layer.node
            w = _graph.array(out, layer.weight)
            if node.op_type == "Conv" and (w.shape[2:] != (1, 1) or _graph.attr(node, "group", 1) != 1):
                continue
            if _graph.use_count(out, layer.weight) > 1:
                notes.append(f"skipped {layer.name}: its weight is shared")
                continue
            if w.size < cfg.min_params:
                continue
            kn = _graph.as_matrix(layer, w).T.astype(np.float64)  # [K, N]: x @ kn
            k, n = kn.shape
            u, s, vt = np.linalg.svd(kn, full_matrices=False)
            r = choose_rank(s, k, n, energy=cfg.energy, param_budget=cfg.param_budget)
            if r * (k + n) >= k * n:
                msg = f"skipped {layer.name}: rank {r} of {k}x{n} would not reduce parameters or MACs"
                log.info("lowrank: %s", msg)
                notes.append(msg)
                continue
            root = np.sqrt(s[:r])
            a = (u[:, :r] * root).astype(w.dtype)
            b = (root[:, None] * vt[:r]).astype(w.dtype)
            kept = float((s[:r] ** 2).sum() / max((s**2).sum(), 1e-300))
            self._rewrite(out, layer, a, b)
            changed += 1
            notes.append(f"{layer.name}: {k}x{n} -> rank {r} ({kept:.1%} energy), {k * n} -> {r * (k + n)} params")
        _graph.drop_unused_initializers(out)
        _graph.reset_shapes(out)
        return Transformed(model=out, modified=changed > 0, notes=tuple(notes))

    @staticmethod
    def _rewrite(model: onnx.ModelProto, layer: _graph.Layer, a: np.ndarray, b: np.ndarray) -> None:
        node = layer.node
        base = layer.name
        mid = f"{base}_lowrank"
        a_name, b_name = f"{base}_lowrank_a", f"{base}_lowrank_b"
        if node.op_type == "Conv":
            r = a.shape[1]
            _graph.set_array(model, a_name, a.T.reshape(r, -1, 1, 1))
            _graph.set_array(model, b_name, b.T.reshape(-1, r, 1, 1))
            keep = {k: helper.get_attribute_value(x) for x in node.attribute for k in [x.name] if k != "kernel_shape"}
            first = helper.make_node("Conv", [node.input[0], a_name], [mid], name=f"{base}_a", kernel_shape=[1, 1], **keep)
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
