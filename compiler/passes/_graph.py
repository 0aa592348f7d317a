"""Graph helpers shared by the compression passes: layers with weights, their biases, initializers,
consumers, and running a model with intermediate tensors exposed.

Not a pass: the passes import it so each of them stays about its technique.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgefleet.compiler import inference
from edgefleet.compiler.calibration import Dataset

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


class NodeError(ValueError):
    """A pass cannot handle one node; ``node`` names it so the pipeline can say where it failed."""

    def __init__(self, message: str, *, node: str) -> None:
        super().__init__(f"node {node!r}: {message}")
        self.node = node


@dataclass(frozen=True)
class Layer:
    """A Conv, Gemm or MatMul whose weight is an initializer.

    ``out_axis`` and ``in_axis`` are the weight's output-feature and reduced axes (for Conv the
    reduced part is axes 1.. together: input channels x kernel area).
    """

    node: onnx.NodeProto
    weight: str
    out_axis: int
    in_axis: int

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(initializers(model)[name])


def set_array(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace (or add) initializer ``name`` with ``value``, keeping its dtype."""
    inits = initializers(model)
    old = inits.get(name)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type) if old is not None else value.dtype
    new = numpy_helper.from_array(np.ascontiguousarray(value, dtype=dtype), name)
    if old is not None:
        old.CopyFrom(new)
    else:
        model.graph.initializer.append(new)


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    uses: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                uses.setdefault(name, []).append(node)
    return uses


def use_count(model: onnx.ModelProto, name: str) -> int:
    return sum(1 for node in model.graph.node for i in node.input if i == name)


def layers(model: onnx.ModelProto, op_types: tuple[str, ...] = WEIGHT_OPS) -> Iterator[Layer]:
    """Layers with an initializer weight, in graph order: Conv, Gemm (transA=0), 2-D MatMul weights."""
    inits = initializers(model)
    for node in model.graph.node:
        if node.op_type not in op_types or len(node.input) < 2 or node.input[1] not in inits:
            continue
        dims = list(inits[node.input[1]].dims)
        if node.op_type == "Conv" and len(dims) >= 3:
            yield Layer(node, node.input[1], out_axis=0, in_axis=1)
        elif node.op_type == "Gemm" and len(dims) == 2 and not attr(node, "transA", 0):
            trans_b = bool(attr(node, "transB", 0))
            yield Layer(node, node.input[1], out_axis=0 if trans_b else 1, in_axis=1 if trans_b else 0)
        elif node.op_type == "MatMul" and len(dims) == 2:
            yield Layer(node, node.input[1], out_axis=1, in_axis=0)


def as_matrix(layer: Layer, w: np.ndarray) -> np.ndarray:
    """The weight as [out, reduced]: one row per output feature or channel."""
    if layer.node.op_type == "Conv":
        return w.reshape(w.shape[0], -1)
    return w if layer.out_axis == 0 else w.T


def from_matrix(layer: Layer, m: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if layer.node.op_type == "Conv":
        return m.reshape(shape)
    return m if layer.out_axis == 0 else m.T


def bias_slot(model: onnx.ModelProto, layer: Layer) -> tuple[str, str] | None:
    """(initializer name, how) of the per-output bias this layer adds, if it has one we can change.

    Conv and Gemm carry it as input 2; a MatMul's bias is the initializer of the Add that alone
    consumes its output (how ``MatMul, Add`` exporters write a dense layer).
    """
    node = layer.node
    inits = initializers(model)
    if node.op_type in ("Conv", "Gemm"):
        if len(node.input) > 2 and node.input[2] in inits:
            return node.input[2], "input"
        return None
    uses = consumers(model).get(node.output[0], [])
    if len(uses) == 1 and uses[0].op_type == "Add":
        other = [i for i in uses[0].input if i != node.output[0]]
        if len(other) == 1 and other[0] in inits:
            return other[0], "add"
    return None


def ensure_bias(model: onnx.ModelProto, layer: Layer, channels: int) -> str | None:
    """The layer's bias initializer, created as zeros on a Conv or Gemm without one; None for a bare MatMul."""
    found = bias_slot(model, layer)
    if found is not None:
        return found[0]
    if layer.node.op_type not in ("Conv", "Gemm"):
        return None
    name = f"{layer.name}_bias"
    set_array(model, name, np.zeros(channels, np.float32))
    while len(layer.node.input) < 2:
        layer.node.input.append("")
    layer.node.input.append(name)
    return name


def expose(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``tensors`` added as graph outputs (after the original outputs)."""
    out = copy.deepcopy(model)
    present = {o.name for o in out.graph.output}
    for name in tensors:
        if name not in present:
            out.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    return out


def run_tensors(model: onnx.ModelProto, tensors: list[str], data: Dataset) -> dict[str, np.ndarray]:
    """The values of ``tensors`` on every sample of ``data``, stacked as ``[N, ...]``."""
    exposed = expose(model, tensors)
    names = [o.name for o in exposed.graph.output]
    values = inference.run_model(exposed, list(data.feeds()))
    by_name = dict(zip(names, values, strict=True))
    return {t: by_name[t] for t in tensors}


def limit(data: Dataset, count: int) -> Dataset:
    return data.take(range(min(count, len(data))))


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for node in model.graph.node for i in node.input} | {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def reset_shapes(model: onnx.ModelProto) -> None:
    """Drop intermediate shape annotations a rewrite made stale; ONNX shape inference recomputes them."""
    del model.graph.value_info[:]
