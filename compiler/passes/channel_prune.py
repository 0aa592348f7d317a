"""Structured pruning: whole output channels of Conv, Gemm and MatMul layers removed, and their consumers rewired.

Unlike zeroing weights, this makes the model smaller and faster on any runtime: the pruned
layer's weight and bias lose rows, and the layers downstream lose what read those channels:

    producer -> [Relu | Clip | LeakyRelu | Sigmoid | Tanh | MaxPool | AveragePool | GlobalAveragePool
                 | BatchNormalization | depthwise Conv]* -> consumer

where the consumer is a Conv with group=1 (its input channels are sliced), a Gemm or MatMul (its
input features), or a Flatten followed by one (the features of the dropped channels, each
channel's H x W block). Every tensor in the chain must have one consumer and not be a graph output. A
channel that feeds anything else (a residual Add, a Concat, a grouped Conv, an output) cannot be
removed without rewiring what is on the other side, so such a producer is skipped and logged.

Which channels go: the ``ratio`` of each layer's channels with the smallest ``criterion``: the L1
or L2 norm of the channel's weights, or (``activation``) the mean absolute activation the channel
feeds the consumer, measured on calibration data.

Recovery without training (``compensate``, needs calibration data): a removed channel's activation
is replaced by its mean over the calibration samples, folded into the consumer's bias. For a
Gemm after Flatten this is exact per feature; for a Conv consumer it uses the channel's spatial
mean (border effects of zero padding are ignored).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import onnx

from edgefleet.compiler.passes import _graph
from edgefleet.compiler.passes.base import Pass, PassConfig, PassData, Transformed

log = logging.getLogger(__name__)

_PASS_THROUGH = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "MaxPool", "AveragePool", "GlobalAveragePool",
                 "BatchNormalization"}

_CRITERIA = ("l1", "l2", "activation", "variance")
_DATA_CRITERIA = ("activation", "variance")


@dataclass(frozen=True)
class ChannelPruneConfig(PassConfig):
    scheme: ClassVar[str] = "channel-prune"

    ratio: float = 0.25
    """Fraction of each prunable layer's output channels removed (at least one channel is kept)."""
    criterion: Literal["l1", "l2", "activation", "variance"] = "l1"
    compensate: bool = True
    calibration_samples: int = 128
    op_types: tuple[str, ...] = _graph.WEIGHT_OPS
    layers: tuple[str, ...] = ()
    """Prune only these producers (node names, or output names for unnamed nodes); empty for all."""
    multiple: int = 1
    """Round each layer's kept channels up to a multiple of this. CPU kernels are vectorised over
    blocks of channels (onnxruntime's NCHWc convolutions use 8 or 16): on the digits MobileNet, 30% of
    channels removed without rounding made onnxruntime *slower* (0.58x), and 8 made it faster."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"channel-prune: ratio must be in [0, 1), got {self.ratio}")
        if self.criterion not in _CRITERIA:
            raise ValueError(f"channel-prune: criterion must be one of {', '.join(_CRITERIA)}, got {self.criterion!r}")
        if self.multiple < 1:
            raise ValueError(f"channel-prune: multiple must be at least 1, got {self.multiple}")


@dataclass
class _Plan:
    """One producer and everything that must change with its channels."""

    producer: _graph.Layer
    bias: str | None
    chain: list[onnx.NodeProto]
    consumer: _graph.Layer
    flatten: bool
    feed: str
    """The tensor the consumer reads (the end of the chain): where activations are measured."""
    channels: int
    skip: str = ""
    params: list[str] = field(default_factory=list)


class ChannelPrune(Pass[ChannelPruneConfig]):
    config_type = ChannelPruneConfig

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        cfg = self.config
        out = copy.deepcopy(model)
        notes: list[str] = []
        plans = []
        for layer in list(_graph.layers(out, cfg.op_types)):
            if cfg.layers and layer.name not in cfg.layers:
                continue
            plan = self._plan(out, layer)
            if isinstance(plan, str):
                log.info("channel-prune: skipped %s: %s", layer.name, plan)
                notes.append(f"skipped {layer.name}: {plan}")
            else:
                plans.append(plan)
        calib = data.calibration if data.calibration is not None and not data.calibration.synthetic else None
        data_criterion = cfg.criterion in _DATA_CRITERIA
        if (cfg.compensate or data_criterion) and calib is None:
            notes.append("no calibration data: no compensation" + ("; criterion falls back to l1" if data_criterion else ""))
        activations: dict[str, np.ndarray] = {}
        if calib is not None and plans and (cfg.compensate or data_criterion):
            calib = _graph.limit(calib, cfg.calibration_samples)
            activations = _graph.run_tensors(model, [p.feed for p in plans], calib)
        pruned = 0
        for plan in plans:
            act = activations.get(plan.feed)
            keep = self._keep(out, plan, act)
            if keep.size == plan.channels:
                continue
            try:
                self._rewire(out, plan, keep, act if cfg.compensate else None)
            except ValueError as exc:
                raise _graph.NodeError(str(exc), node=plan.producer.name) from exc
            pruned += 1
            notes.append(f"{plan.producer.name}: {plan.channels} -> {keep.size} channels "
                         f"(rewired {plan.consumer.name}{' via Flatten' if plan.flatten else ''})")
        _graph.drop_unused_initializers(out)
        _graph.reset_shapes(out)
        return Transformed(model=out, modified=pruned > 0, notes=tuple(notes))

    def _plan(self, model: onnx.ModelProto, layer: _graph.Layer) -> _Plan | str:
        node = layer.node
        if node.op_type == "Conv" and _graph.attr(node, "group", 1) != 1:
            return "grouped or depthwise Conv"
        inits = _graph.initializers(model)
        if _graph.use_count(model, layer.weight) > 1:
            return "its weight is shared"
        channels = int(inits[layer.weight].dims[layer.out_axis])
        uses = _graph.consumers(model)
        outputs = {o.name for o in model.graph.output}
        bias = None
        tensor = node.output[0]
        slot = _graph.bias_slot(model, layer)
        if slot is not None:
            bias = slot[0]
            if _graph.use_count(model, bias) > 1 or int(np.prod(inits[bias].dims)) != channels:
                return "its bias is shared or not per channel"
            if slot[1] == "add":
                tensor = uses[tensor][0].output[0]
        chain: list[onnx.NodeProto] = []
        params: list[str] = []
        while True:
            if tensor in outputs:
                return f"{tensor!r} is a graph output"
            nexts = uses.get(tensor, [])
            if len(nexts) != 1:
                kinds = ", ".join(sorted({n.op_type for n in nexts})) or "nothing"
                return f"{tensor!r} feeds {len(nexts)} nodes ({kinds}); cannot rewire a fan-out"
            nxt = nexts[0]
            if _is_depthwise(nxt, tensor, channels, inits):
                # A depthwise Conv maps channel c to channel c: it loses the same channels (weight
                # rows, bias, group) and passes the rest on, as in MobileNet's separable blocks.
                if any(_graph.use_count(model, p) > 1 for p in nxt.input[1:] if p):
                    return f"depthwise Conv {nxt.name!r} shares its weight or bias"
                params += [p for p in nxt.input[1:] if p]
                chain.append(nxt)
                tensor = nxt.output[0]
                continue
            if nxt.op_type in _PASS_THROUGH and nxt.input[0] == tensor:
                if nxt.op_type == "BatchNormalization":
                    bn = list(nxt.input[1:5])
                    if any(p not in inits or _graph.use_count(model, p) > 1 for p in bn):
                        return f"BatchNormalization {nxt.name!r} has non-constant or shared parameters"
                    params += bn
                chain.append(nxt)
                tensor = nxt.output[0]
                continue
            flatten = False
            if nxt.op_type == "Flatten" and _graph.attr(nxt, "axis", 1) == 1:
                flatten = True
                flat_uses = uses.get(nxt.output[0], [])
                if nxt.output[0] in outputs or len(flat_uses) != 1:
                    return "its Flatten output feeds more than one node"
                chain.append(nxt)
                nxt = flat_uses[0]
            reads = nxt.input[0] if nxt.input else ""
            consumer = next((c for c in _graph.layers(model, ("Conv", "Gemm", "MatMul"))
                             if list(c.node.output) == list(nxt.output)), None)
            if consumer is None or reads != (chain[-1].output[0] if flatten else tensor):
                return f"its channels feed {nxt.op_type} {nxt.name or nxt.output[0]!r}, which cannot be rewired"
            if consumer.node.op_type == "Conv" and (_graph.attr(consumer.node, "group", 1) != 1 or flatten):
                return f"its channels feed a grouped Conv {consumer.name!r}"
            if consumer.node.op_type != "Conv" and node.op_type == "Conv" and not flatten:
                return f"a Conv feeds {consumer.name!r} without a Flatten"
            if _graph.use_count(model, consumer.weight) > 1:
                return f"the weight of {consumer.name!r} is shared"
            return _Plan(producer=layer, bias=bias, chain=chain, consumer=consumer, flatten=flatten, feed=tensor,
                         channels=channels, params=params)

    def _keep(self, model: onnx.ModelProto, plan: _Plan, act: np.ndarray | None) -> np.ndarray:
        cfg = self.config
        drop = int(np.floor(cfg.ratio * plan.channels))
        drop = min(drop, plan.channels - 1)
        kept = -(-(plan.channels - drop) // cfg.multiple) * cfg.multiple
        drop = max(0, plan.channels - kept)
        if drop <= 0:
            return np.arange(plan.channels)
        if cfg.criterion == "activation" and act is not None:
            score = self._per_channel(np.abs(act), plan)
        elif cfg.criterion == "variance" and act is not None:
            score = self._variance_score(model, plan, act)
        else:
            rows = _graph.as_matrix(plan.producer, _graph.array(model, plan.producer.weight)).astype(np.float64)
            score = np.abs(rows).sum(1) if cfg.criterion != "l2" else np.sqrt((rows**2).sum(1))
        order = np.argsort(-score, kind="stable")
        return np.sort(order[: plan.channels - drop])

    @staticmethod
    def _variance_score(model: onnx.ModelProto, plan: _Plan, act: np.ndarray) -> np.ndarray:
        """Expected squared error in the consumer's output when a channel is replaced by its mean:
        the variance of each feature the channel feeds times the squared weights reading it
        (correlations between channels ignored). The criterion that matches ``compensate``."""
        cons = plan.consumer
        cw = _graph.array(model, cons.weight).astype(np.float64)
        if cons.node.op_type == "Conv":
            var = act.reshape(act.shape[0], plan.channels, -1).var(axis=0).mean(axis=1)  # per channel
            result: np.ndarray = var * (cw**2).sum(axis=(0, *range(2, cw.ndim)))
            return result
        feats = act.reshape(act.shape[0], -1).var(axis=0)  # [C * per]
        weight = (cw**2).sum(axis=0 if cons.in_axis == 1 else 1)  # per input feature
        return (feats * weight).reshape(plan.channels, -1).sum(axis=1)

    @staticmethod
    def _per_channel(act: np.ndarray, plan: _Plan) -> np.ndarray:
        """Mean over samples of a stacked activation [N, 1, C, ...] or [N, 1, C], per channel."""
        a = act.reshape(act.shape[0], plan.channels, -1) if plan.producer.node.op_type == "Conv" else act.reshape(-1, plan.channels)
        axes = (0, 2) if a.ndim == 3 else (0,)
        result: np.ndarray = a.mean(axis=axes)
        return result

    def _rewire(self, model: onnx.ModelProto, plan: _Plan, keep: np.ndarray, act: np.ndarray | None) -> None:
        prod = plan.producer
        w = _graph.array(model, prod.weight)
        _graph.set_array(model, prod.weight, np.take(w, keep, axis=prod.out_axis))
        if plan.bias is not None:
            b = _graph.array(model, plan.bias)
            _graph.set_array(model, plan.bias, b.reshape(-1)[keep])
        for name in plan.params:
            _graph.set_array(model, name, _graph.array(model, name)[keep])
        for node in plan.chain:
            if node.op_type == "Conv":  # a depthwise Conv in the chain: one group per remaining channel
                for a in node.attribute:
                    if a.name == "group":
                        a.i = int(keep.size)
        cons = plan.consumer
        cw = _graph.array(model, cons.weight)
        dropped = np.setdiff1d(np.arange(plan.channels), keep)
        if cons.node.op_type == "Conv":
            in_axis = 1
            new_cw = np.take(cw, keep, axis=1)
            shift = None
            if act is not None:
                shift = _conv_mean_shift(cons.node, cw[:, dropped], act.reshape(act.shape[0], plan.channels, *act.shape[-2:])[:, dropped])
        else:
            in_axis = cons.in_axis
            per = cw.shape[in_axis] // plan.channels
            if per * plan.channels != cw.shape[in_axis]:
                raise ValueError(f"{cons.name!r} reads {cw.shape[in_axis]} features, not a multiple of {plan.channels} channels")
            idx = (keep[:, None] * per + np.arange(per)).ravel()
            gone = (dropped[:, None] * per + np.arange(per)).ravel()
            new_cw = np.take(cw, idx, axis=in_axis)
            shift = None
            if act is not None:
                feats = act.reshape(act.shape[0], -1).astype(np.float64).mean(axis=0)[gone]  # [D * per]
                dropped_w = np.take(cw, gone, axis=in_axis).astype(np.float64)
                shift = dropped_w @ feats if in_axis == 1 else feats @ dropped_w
        _graph.set_array(model, cons.weight, new_cw)
        if shift is not None and dropped.size:
            out_channels = cw.shape[cons.out_axis]
            bias = _graph.ensure_bias(model, cons, out_channels)
            if bias is not None:
                b = _graph.array(model, bias)
                if b.size == out_channels:
                    _graph.set_array(model, bias, (b.astype(np.float64) + shift.reshape(b.shape)).astype(b.dtype))


def _is_depthwise(node: onnx.NodeProto, tensor: str, channels: int, inits: dict[str, onnx.TensorProto]) -> bool:
    """Whether ``node`` is a depthwise Conv (multiplier 1) reading ``tensor`` of ``channels`` channels, with constant parameters."""
    if node.op_type != "Conv" or not node.input or node.input[0] != tensor or _graph.attr(node, "group", 1) != channels:
        return False
    if any(p not in inits for p in node.input[1:] if p):
        return False
    dims = list(inits[node.input[1]].dims)
    return dims[:2] == [channels, 1]


def _conv_mean_shift(node: onnx.NodeProto, weight: np.ndarray, act: np.ndarray) -> np.ndarray:
    """Mean change of a Conv's output channels when inputs ``act`` [N, D, H, W] are replaced by their means.

    The per-position mean map of the removed channels is convolved with their weights (zero padding
    included, so border positions see fewer taps), then averaged over output positions.
    """
    mean_map = act.astype(np.float64).mean(axis=0)  # [D, H, W]
    pads = list(_graph.attr(node, "pads", [0, 0, 0, 0]))  # type: ignore[arg-type]
    strides = list(_graph.attr(node, "strides", [1, 1]))  # type: ignore[arg-type]
    kh, kw = weight.shape[2:]
    padded = np.pad(mean_map, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    out_h = (padded.shape[1] - kh) // strides[0] + 1
    out_w = (padded.shape[2] - kw) // strides[1] + 1
    out = np.zeros((weight.shape[0], out_h, out_w))
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i : i + out_h * strides[0] : strides[0], j : j + out_w * strides[1] : strides[1]]
            out += np.einsum("oc,chw->ohw", weight[:, :, i, j].astype(np.float64), window)
    result: np.ndarray = out.mean(axis=(1, 2))
    return result
