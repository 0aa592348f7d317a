"""Training ONNX models with PyTorch (the ``train`` extra): a bridge from an ONNX graph to a trainable
``torch.nn.Module``, the training loop the ``finetune`` and ``distill`` passes share, and the way back.

Why a hand-written bridge rather than onnx2torch, the library for this: onnx2torch imports
torchvision, which fails to import beside the torch the ``train`` extra installs; and the passes
need only the operators of the repo's model set (``SUPPORTED_OPS``), interpreted node by node in a
few lines each. An operator outside that set is refused up front, naming the node and the op.

Why the trained values go back into the ONNX initializers rather than through ``torch.onnx.export``:
the graph stays node for node what came in (names, opset, layout, the static batch of 1 the device
runtimes and the other passes expect), and no exporter (which in torch 2.x needs onnxscript and
rewrites the graph) is involved. The bridge's parameters *are* the graph's initializers, by name.

Batching: the model set's graphs have a static batch of 1 and Reshape targets that say so, so the
bridge runs the graph on one sample and ``torch.func.vmap`` batches it; every op means exactly what
it means in ONNX.

Constraints (``Tie``) keep a compressed model compressed while it trains: a pruned weight trains
only its non-zeros (the zeros are a fixed mask), a clustered weight trains only its codebook (every
weight is ``centroids[index]``, and a centroid's gradient is the sum over the weights that share it,
as in Deep Compression, Han et al. 2016).

This module imports torch; the passes import it lazily (``edgefleet.compiler.passes.finetune.training_module``)
so the compiler works without the extra.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from edgefleet.compiler.passes._graph import NodeError

log = logging.getLogger(__name__)

Value = torch.Tensor
OpFn = Callable[["_Node", list[Value | None]], list[Value]]

_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class _Node:
    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, object]
    static: Mapping[str, np.ndarray]
    """Constant inputs (initializers, Constant outputs) by name, for shape-like arguments."""

    def attr(self, name: str, default: object = None) -> object:
        return self.attrs.get(name, default)

    def const(self, index: int) -> np.ndarray | None:
        if index >= len(self.inputs) or not self.inputs[index]:
            return None
        value = self.static.get(self.inputs[index])
        if value is None:
            raise NodeError(f"input {index} ({self.inputs[index]!r}) of {self.op} must be a constant for the training bridge",
                            node=self.name)
        return value


@dataclass(frozen=True)
class Tie:
    """How one weight is constrained while it trains.

    ``mask``: 1 where the weight may change, 0 where it stays zero (pruned).
    ``indices``: per weight, its centroid in ``centroids`` (-1: a pruned zero); training then
    updates the centroids only, so the weight keeps at most ``len(centroids)`` (+ zero) values.
    """

    mask: np.ndarray | None = None
    indices: np.ndarray | None = None
    centroids: np.ndarray | None = None


def _spatial_pads(node: _Node, x: Value, *, value: float = 0.0) -> tuple[Value, list[int]]:
    """Apply ONNX ``pads`` ([begin..., end...]); torch pads symmetrically only, so uneven pads go through F.pad."""
    nd = x.dim() - 2
    auto_pad = node.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise NodeError(f"auto_pad={auto_pad} is not supported by the training bridge; export with explicit pads",
                        node=node.name)
    pads = list(node.attr("pads", [0] * 2 * nd))  # type: ignore[call-overload]
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        return x, begin
    flat: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        flat += [b, e]
    return F.pad(x, flat, value=value), [0] * nd


def _conv(node: _Node, args: list[Value | None]) -> list[Value]:
    x, w, b = args[0], args[1], args[2] if len(args) > 2 else None
    assert x is not None and w is not None
    nd = x.dim() - 2
    x, pads = _spatial_pads(node, x)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return [fn(x, w, b, stride=list(node.attr("strides", [1] * nd)), padding=pads,  # type: ignore[call-overload]
               dilation=list(node.attr("dilations", [1] * nd)), groups=int(node.attr("group", 1)))]  # type: ignore[call-overload]


def _gemm(node: _Node, args: list[Value | None]) -> list[Value]:
    a, b, c = args[0], args[1], args[2] if len(args) > 2 else None
    assert a is not None and b is not None
    a = a.t() if node.attr("transA", 0) else a
    b = b.t() if node.attr("transB", 0) else b
    y = float(node.attr("alpha", 1.0)) * (a @ b)  # type: ignore[arg-type]
    if c is not None:
        y = y + float(node.attr("beta", 1.0)) * c  # type: ignore[arg-type]
    return [y]


def _batch_norm(node: _Node, args: list[Value | None]) -> list[Value]:
    x, scale, bias, mean, var = args[:5]
    assert x is not None and scale is not None and bias is not None and mean is not None and var is not None
    # Inference form with the stored statistics: fine-tuning trains scale and bias as an affine layer.
    shape = (-1,) + (1,) * (x.dim() - 2)
    eps = float(node.attr("epsilon", 1e-5))  # type: ignore[arg-type]
    return [(x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)]


def _clip(node: _Node, args: list[Value | None]) -> list[Value]:
    x = args[0]
    assert x is not None
    low = args[1] if len(args) > 1 else None
    high = args[2] if len(args) > 2 else None
    lo = float(low) if low is not None else node.attr("min")  # type: ignore[arg-type]
    hi = float(high) if high is not None else node.attr("max")  # type: ignore[arg-type]
    return [torch.clamp(x, min=lo, max=hi)]  # type: ignore[arg-type]


def _reshape(node: _Node, args: list[Value | None]) -> list[Value]:
    x = args[0]
    assert x is not None
    shape = [int(s) for s in node.const(1)]  # type: ignore[union-attr]
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _flatten(node: _Node, args: list[Value | None]) -> list[Value]:
    x = args[0]
    assert x is not None
    axis = int(node.attr("axis", 1))  # type: ignore[call-overload]
    axis = axis + x.dim() if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


def _pool(kind: str) -> OpFn:
    def run(node: _Node, args: list[Value | None]) -> list[Value]:
        x = args[0]
        assert x is not None
        nd = x.dim() - 2
        kernel = list(node.attr("kernel_shape"))  # type: ignore[call-overload]
        strides = list(node.attr("strides", [1] * nd))  # type: ignore[call-overload]
        ceil = bool(node.attr("ceil_mode", 0))
        if kind == "max":
            x, pads = _spatial_pads(node, x, value=-math.inf)
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
            return [fn(x, kernel, strides, pads, list(node.attr("dilations", [1] * nd)), ceil_mode=ceil)]  # type: ignore[call-overload]
        pads = list(node.attr("pads", [0] * 2 * nd))  # type: ignore[call-overload]
        if pads[:nd] != pads[nd:]:
            raise NodeError("AveragePool with uneven pads is not supported by the training bridge", node=node.name)
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        return [fn(x, kernel, strides, pads[:nd], ceil_mode=ceil,  # type: ignore[operator]
                   count_include_pad=bool(node.attr("count_include_pad", 0)))]
    return run


def _axes(node: _Node, args: list[Value | None]) -> list[int]:
    axes = node.const(1) if len(node.inputs) > 1 else node.attr("axes")
    return [int(a) for a in axes] if axes is not None else []  # type: ignore[union-attr]


def _squeeze(node: _Node, args: list[Value | None]) -> list[Value]:
    x = args[0]
    assert x is not None
    axes = _axes(node, args) or [i for i, s in enumerate(x.shape) if s == 1]
    return [x.squeeze(tuple(axes))]


def _unsqueeze(node: _Node, args: list[Value | None]) -> list[Value]:
    x = args[0]
    assert x is not None
    rank = x.dim() + len(_axes(node, args))
    for a in sorted(a + rank if a < 0 else a for a in _axes(node, args)):
        x = x.unsqueeze(a)
    return [x]


def _unary(fn: Callable[[Value], Value]) -> OpFn:
    return lambda node, args: [fn(args[0])]  # type: ignore[arg-type]


def _binary(fn: Callable[[Value, Value], Value]) -> OpFn:
    return lambda node, args: [fn(args[0], args[1])]  # type: ignore[arg-type]


def _softmax(log_: bool) -> OpFn:
    def run(node: _Node, args: list[Value | None]) -> list[Value]:
        axis = int(node.attr("axis", -1))  # type: ignore[call-overload]
        return [(F.log_softmax if log_ else F.softmax)(args[0], dim=axis)]  # type: ignore[arg-type]
    return run


OPS: dict[str, OpFn] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "BatchNormalization": _batch_norm,
    "Relu": _unary(F.relu),
    "LeakyRelu": lambda node, args: [F.leaky_relu(args[0], float(node.attr("alpha", 0.01)))],  # type: ignore[arg-type]
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp),
    "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg),
    "Clip": _clip,
    "Softmax": _softmax(False),
    "LogSoftmax": _softmax(True),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Pow": _binary(torch.pow),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Transpose": lambda node, args: [args[0].permute(*node.attr("perm", list(range(args[0].dim()))[::-1]))],  # type: ignore[union-attr, misc]
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": lambda node, args: [torch.cat([a for a in args if a is not None], dim=int(node.attr("axis")))],  # type: ignore[call-overload]
    "GlobalAveragePool": lambda node, args: [args[0].mean(dim=tuple(range(2, args[0].dim())), keepdim=True)],  # type: ignore[union-attr]
    "AveragePool": _pool("avg"),
    "MaxPool": _pool("max"),
    "Identity": _unary(lambda x: x),
    "Dropout": _unary(lambda x: x),  # inference semantics, as in the graph
}
SUPPORTED_OPS = tuple(sorted(OPS))


def trainable_names(model: onnx.ModelProto) -> list[str]:
    """The float initializers training may change: weights and biases of Conv/Gemm/MatMul, the bias
    an ``Add`` puts after a MatMul, Gemm or Conv, and BatchNormalization's scale and shift.

    Everything else (BatchNormalization statistics, Clip bounds, shapes, constants) stays as it is.
    """
    inits = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type in _WEIGHT_OPS:
            picked = list(node.input[1:])
        elif node.op_type == "BatchNormalization":
            picked = list(node.input[1:3])
        elif node.op_type == "Add" and len(node.input) == 2:
            picked = [b for a, b in (node.input, node.input[::-1]) if producer.get(a) in _WEIGHT_OPS]
        else:
            picked = []
        names += [p for p in picked if p in inits and p not in names]
    return names


def _key(name: str) -> str:
    # nn.ParameterDict keys may not contain dots; initializer names often do.
    return name.replace(".", "\u2024")


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module: ``forward(*inputs)`` takes each input batched as ``[B, *shape]``
    (shape as in the graph, batch 1 included) and returns the outputs as ``[B, *shape]``.

    ``trainable`` initializers (default ``trainable_names``) become parameters, constrained by
    ``ties``; the rest are constants. ``write_back`` returns the ONNX model with the trained values.
    """

    def __init__(self, model: onnx.ModelProto, *, trainable: Sequence[str] | None = None,
                 ties: Mapping[str, Tie] | None = None) -> None:
        super().__init__()
        self.model = model
        graph = model.graph
        static: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self._nodes: list[tuple[_Node, OpFn]] = []
        for index, node in enumerate(graph.node):
            name = node.name or f"{node.op_type}_{index}({node.output[0]})"
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                if "value" not in attrs:
                    raise NodeError("only Constant with a tensor 'value' is supported by the training bridge", node=name)
                static[node.output[0]] = numpy_helper.to_array(attrs["value"])  # type: ignore[arg-type]
                continue
            fn = OPS.get(node.op_type)
            if fn is None or (node.domain not in ("", "ai.onnx")):
                quantized = "quantize" in node.op_type.lower() or node.op_type.startswith(("QLinear", "MatMulInteger", "ConvInteger"))
                hint = ("; a quantized graph cannot be trained: put training passes before int8" if quantized
                        else f"; it supports {', '.join(SUPPORTED_OPS)}")
                raise NodeError(f"operator {node.op_type!r} (domain {node.domain or 'ai.onnx'!r}) is not supported by the "
                                f"training bridge{hint}", node=name)
            self._nodes.append((_Node(node.op_type, name, tuple(node.input), tuple(node.output), attrs, static), fn))
        self.trainable = list(trainable_names(model) if trainable is None else trainable)
        self.ties = dict(ties or {})
        self.weights = nn.ParameterDict()
        self._masks: dict[str, Value] = {}
        self._indices: dict[str, Value] = {}
        for name in self.trainable:
            value = static.pop(name).astype(np.float32)
            tie = self.ties.get(name, Tie())
            if tie.indices is not None and tie.centroids is not None:
                self.weights[_key(name)] = nn.Parameter(torch.tensor(tie.centroids, dtype=torch.float32))
                self._indices[name] = torch.tensor(tie.indices, dtype=torch.long)
            else:
                self.weights[_key(name)] = nn.Parameter(torch.tensor(value))
                if tie.mask is not None:
                    self._masks[name] = torch.tensor(tie.mask, dtype=torch.float32)
        self._consts = {k: torch.tensor(v) for k, v in static.items()}
        self._static = static
        self._inputs = [i.name for i in graph.input if i.name not in {x.name for x in graph.initializer}]
        self._outputs = [o.name for o in graph.output]
        producers = {o: n for n, _ in self._nodes for o in n.outputs}
        first = producers.get(self._outputs[0])
        # A classifier ending in Softmax trains on the Softmax's input: temperature and cross-entropy need logits.
        self.logits_name = first.inputs[0] if first is not None and first.op in ("Softmax", "LogSoftmax") else self._outputs[0]

    def tensor(self, name: str) -> Value:
        """The effective value of a trainable initializer, constraints applied."""
        p = self.weights[_key(name)]
        if name in self._indices:
            idx = self._indices[name]
            return torch.where(idx >= 0, p[idx.clamp(min=0)], torch.zeros((), dtype=p.dtype))
        if name in self._masks:
            return p * self._masks[name]
        return p

    def _run(self, wanted: Sequence[str], *inputs: Value) -> tuple[Value, ...]:
        env: dict[str, Value] = dict(self._consts)
        env.update({name: self.tensor(name) for name in self.trainable})
        env.update(zip(self._inputs, inputs, strict=True))
        for node, fn in self._nodes:
            args = [env[i] if i else None for i in node.inputs]
            for name, value in zip(node.outputs, fn(node, args), strict=False):
                env[name] = value
            if all(w in env for w in wanted):
                break
        return tuple(env[w] for w in wanted)

    def forward(self, *inputs: Value, logits: bool = False) -> tuple[Value, ...]:
        wanted = [self.logits_name] if logits else self._outputs
        return torch.func.vmap(lambda *xs: self._run(wanted, *xs))(*inputs)  # type: ignore[no-any-return]

    def write_back(self) -> onnx.ModelProto:
        """A copy of the ONNX model with every trainable initializer set to its trained value."""
        out = copy.deepcopy(self.model)
        inits = {i.name: i for i in out.graph.initializer}
        with torch.no_grad():
            for name in self.trainable:
                value = self.tensor(name).detach().numpy().astype(np.float32).reshape(list(inits[name].dims))
                inits[name].CopyFrom(numpy_helper.from_array(value, name))
        return out


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Use ``count`` torch threads inside the block: small models train no faster on more, and the host is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(arrays: Sequence[np.ndarray], size: int) -> Iterator[list[Value]]:
    n = len(arrays[0])
    for start in range(0, n, size):
        yield [torch.from_numpy(np.ascontiguousarray(a[start : start + size])) for a in arrays]


def logits(module: OnnxModule, arrays: Sequence[np.ndarray], *, batch: int = 256) -> np.ndarray:
    """The module's logits (or first output when it has no Softmax) on every sample, as ``[N, classes]``."""
    with torch.no_grad():
        parts = [module(*xs, logits=True)[0].reshape(len(xs[0]), -1) for xs in _batches(arrays, batch)]
    return torch.cat(parts).numpy()


def accuracy(module: OnnxModule, arrays: Sequence[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean(logits(module, arrays).argmax(axis=1) == labels))


@dataclass(frozen=True)
class Schedule:
    """How to train: epochs over the data in shuffled mini-batches, Adam at ``lr`` with cosine decay."""

    epochs: int
    lr: float
    batch: int = 32
    seed: int = 0
    threads: int = 1


def fit(module: OnnxModule, arrays: Sequence[np.ndarray], schedule: Schedule, *, labels: np.ndarray | None = None,
        teacher: np.ndarray | None = None, temperature: float = 4.0, alpha: float = 0.5) -> list[float]:
    """Train ``module`` in place; returns the mean loss of each epoch.

    With ``teacher`` logits, the loss is Hinton et al.'s (2015): ``alpha * T^2 * KL(softmax(t/T) ||
    softmax(s/T))`` (T^2 keeps the soft gradients' scale independent of T) plus ``(1 - alpha)`` times
    cross-entropy to ``labels`` when there are labels; without labels only the soft term. Without a
    teacher, plain cross-entropy. Seeded: the same arguments give the same weights.
    """
    if labels is None and teacher is None:
        raise ValueError("training needs labels or teacher outputs")
    n = len(arrays[0])
    torch.manual_seed(schedule.seed)
    order_rng = np.random.default_rng(schedule.seed)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=schedule.lr)
    steps = schedule.epochs * math.ceil(n / schedule.batch)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    y = torch.from_numpy(labels.astype(np.int64)) if labels is not None else None
    soft = torch.from_numpy(teacher.astype(np.float32)) if teacher is not None else None
    history: list[float] = []
    with threads(schedule.threads):
        for epoch in range(schedule.epochs):
            order = order_rng.permutation(n)
            total = 0.0
            for start in range(0, n, schedule.batch):
                idx = order[start : start + schedule.batch]
                xs = [torch.from_numpy(np.ascontiguousarray(a[idx])) for a in arrays]
                out = module(*xs, logits=True)[0].reshape(len(idx), -1)
                loss = torch.zeros(())
                if soft is not None:
                    t = temperature
                    kd = F.kl_div(F.log_softmax(out / t, dim=1), F.log_softmax(soft[idx] / t, dim=1),
                                  reduction="batchmean", log_target=True) * t * t
                    loss = loss + (alpha if y is not None else 1.0) * kd
                if y is not None:
                    loss = loss + (1.0 - alpha if soft is not None else 1.0) * F.cross_entropy(out, y[idx])
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                lr_schedule.step()
                total += float(loss.detach()) * len(idx)
            history.append(total / n)
            log.debug("epoch %d: loss %.4f", epoch + 1, history[-1])
    return history
