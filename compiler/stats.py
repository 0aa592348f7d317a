"""Static measurements of an ONNX model: parameters, size on disk, and a rough activation-memory peak.

Parameters are counted so that a quantized model and its float original give the same number:
quantization metadata (scales and zero points) is not a parameter. An initializer counts as
metadata when every use of it is a scale or zero-point slot of a (de)quantizing operator, or a
multiplication with a dynamically computed scale (how onnxruntime's dynamic quantization rescales
``MatMulInteger`` results).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

# op type -> input slots that hold scales or zero points.
_QUANT_SLOTS: dict[str, frozenset[int]] = {
    "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "MatMulInteger": frozenset({2, 3}),
    "ConvInteger": frozenset({2, 3}),
    "QLinearMatMul": frozenset({1, 2, 4, 5, 6, 7}),
    "QLinearConv": frozenset({1, 2, 4, 5, 6, 7}),
}


@dataclass(frozen=True)
class ModelStats:
    params: int
    nonzero_params: int
    size_bytes: int
    activation_bytes: int
    """Peak bytes of one node's non-constant inputs plus outputs: what must be live at once, at least."""

    @property
    def ram_bytes(self) -> int:
        """Rough RAM need on a device: the weights plus the largest activations (runtime overhead not counted)."""
        return self.size_bytes + self.activation_bytes


def measure(model: onnx.ModelProto) -> ModelStats:
    params, nonzero = count_params(model)
    return ModelStats(
        params=params,
        nonzero_params=nonzero,
        size_bytes=model.ByteSize(),
        activation_bytes=activation_peak_bytes(model),
    )


def count_params(model: onnx.ModelProto) -> tuple[int, int]:
    """(parameters, non-zero parameters), quantization metadata excluded."""
    metadata = _quantization_metadata(model)
    total = nonzero = 0
    for init in model.graph.initializer:
        if init.name in metadata:
            continue
        values = numpy_helper.to_array(init)
        total += int(values.size)
        nonzero += int(np.count_nonzero(values))
    return total, nonzero


def _quantization_metadata(model: onnx.ModelProto) -> set[str]:
    dynamic_scales = {n.output[1] for n in model.graph.node if n.op_type == "DynamicQuantizeLinear" and len(n.output) > 1}
    uses: dict[str, list[bool]] = {}
    for node in model.graph.node:
        slots = _QUANT_SLOTS.get(node.op_type, frozenset())
        for i, name in enumerate(node.input):
            is_meta = i in slots or (node.op_type == "Mul" and any(other in dynamic_scales for other in node.input if other != name))
            uses.setdefault(name, []).append(is_meta)
    return {name for name, flags in uses.items() if flags and all(flags)}


def activation_peak_bytes(model: onnx.ModelProto) -> int:
    """The largest sum, over nodes, of the bytes of its non-constant inputs and its outputs.

    Uses ONNX shape inference; tensors whose shape it cannot infer are left out (and logged), so
    the figure is a lower bound, which is what a "does it obviously not fit" check needs.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError as exc:
        log.info("shape inference failed (%s); activation memory counts graph inputs and outputs only", exc)
        inferred = model
    graph = inferred.graph
    sizes: dict[str, int] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        size = _tensor_bytes(vi)
        if size is not None:
            sizes[vi.name] = size
    constants = {init.name for init in graph.initializer}
    unknown: set[str] = set()
    peak = 0
    for node in graph.node:
        # A node fed only by constants (DequantizeLinear of an int8 weight, a Constant) is folded or
        # fused by the runtime before inference, so its output is a weight, not an activation.
        if all(not name or name in constants for name in node.input):
            constants.update(node.output)
            continue
        live = 0
        for name in [*node.input, *node.output]:
            if not name or name in constants:
                continue
            if name in sizes:
                live += sizes[name]
            else:
                unknown.add(name)
        peak = max(peak, live)
    if unknown:
        log.debug("activation estimate leaves out %d tensors of unknown shape: %s", len(unknown), sorted(unknown)[:5])
    return peak


def _tensor_bytes(vi: onnx.ValueInfoProto) -> int | None:
    t = vi.type.tensor_type
    if not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim) or t.elem_type == 0:
        return None
    count = int(np.prod([d.dim_value for d in t.shape.dim], dtype=np.int64))
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize


# op type -> (input slot of the activation, input slot of the weight), for counting multiply-accumulates.
_MAC_OPS: dict[str, tuple[int, int]] = {
    "Conv": (0, 1),
    "ConvInteger": (0, 1),
    "QLinearConv": (0, 3),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),
}


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every tensor's shape that ONNX shape inference makes fully static, initializers included.

    When inference fails, only the shapes the graph declares are known (logged), so figures built
    on these are lower bounds.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError as exc:
        log.info("shape inference failed (%s); only declared shapes are known", exc)
        inferred = model
    graph = inferred.graph
    shapes: dict[str, list[int]] = {init.name: list(init.dims) for init in graph.initializer}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = [d.dim_value for d in t.shape.dim]
    return shapes


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of one inference in Conv, Gemm and MatMul (and their integer forms).

    Conv: output elements x (input channels per group x kernel area); Gemm and MatMul: output
    elements x the reduced dimension. Shapes come from ONNX shape inference; an operator whose
    shapes it cannot infer is left out (and logged), so the figure is a lower bound. Elementwise
    operators, pooling and normalisation are not counted: next to the layers with weights they
    are noise, and this is the figure that structured pruning and low-rank factorisation change.
    """
    shapes = static_shapes(model)
    return sum(node_macs(node, shapes) for node in model.graph.node)


def node_macs(node: onnx.NodeProto, shapes: Mapping[str, list[int]]) -> int:
    """Multiply-accumulates of one node, as ``count_macs`` counts them (0 for other operators, or when
    its shapes are unknown, which is logged); ``shapes`` from ``static_shapes``."""
    slots = _MAC_OPS.get(node.op_type)
    if slots is None:
        return 0
    x_slot, w_slot = slots
    out = shapes.get(node.output[0])
    x = shapes.get(node.input[x_slot]) if len(node.input) > x_slot else None
    w = shapes.get(node.input[w_slot]) if len(node.input) > w_slot else None
    if out is None or x is None or w is None:
        log.debug("MACs leave out %s %r: shapes unknown", node.op_type, node.name)
        return 0
    out_elems = int(np.prod(out, dtype=np.int64))
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        return out_elems * int(np.prod(w[1:], dtype=np.int64))
    if node.op_type == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return out_elems * x[0 if trans_a else -1]
    return out_elems * x[-1]
