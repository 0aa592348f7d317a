"""The state of one conversion: which TFLite tensor holds each ONNX value, and in which layout.

Op converters (``ops/*.py``) talk to the graph only through ``Context``: they ask for an input in the
layout they need (``get``), add operators on ``ctx.graph``, and record their outputs (``set``).
``get`` materialises constants in the requested layout at conversion time and inserts a
TRANSPOSE (or a RESHAPE when only size-1 axes move) when an activation exists only in the other
layout, caching the result so each tensor is converted at most once per layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as schema
from onnx import helper

from edgefleet.compiler.tflite import layout
from edgefleet.compiler.tflite.builder import GraphBuilder
from edgefleet.compiler.tflite.errors import UnsupportedOp
from edgefleet.compiler.tflite.fold import Prepared

ACT = schema.ActivationFunctionType
OP = schema.BuiltinOperator


@dataclass
class Context:
    prepared: Prepared
    graph: GraphBuilder = field(default_factory=GraphBuilder)
    values: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    """Names of nodes already converted as part of another (a fused activation)."""
    transposes: int = 0

    # --- what ONNX says about a value -----------------------------------------------------------

    def shape(self, name: str) -> tuple[int, ...]:
        return self.prepared.shapes[name]

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def is_const(self, name: str) -> bool:
        return name in self.prepared.constants

    def const(self, name: str) -> np.ndarray:
        return self.prepared.constants[name]

    def stored_in(self, name: str, wanted: str) -> bool:
        """Whether the value already exists in layout ``wanted`` (constants are available in any)."""
        return self.is_const(name) or wanted in self.values.get(name, {})

    def preferred_layout(self, name: str) -> str:
        """NHWC if the value exists in NHWC and is 4-D, else ONNX."""
        if not self.is_const(name) and layout.NHWC in self.values.get(name, {}):
            return layout.NHWC
        return layout.ONNX

    # --- TFLite tensors -----------------------------------------------------------------------

    def get(self, name: str, wanted: str = layout.ONNX) -> int:
        """The TFLite tensor holding ONNX value ``name`` in layout ``wanted``, converting if needed."""
        if self.is_const(name):
            value = self.const(name)
            if wanted == layout.NHWC:
                value = layout.broadcast_constant_nhwc(value)
            key = f"{name}/nhwc" if wanted == layout.NHWC else name
            return self.graph.constant(key, _tflite_const(value))
        stored = self.values.get(name)
        if stored is None:
            raise KeyError(f"value {name!r} used before it is produced")
        if wanted in stored:
            return stored[wanted]
        if wanted == layout.NHWC:
            source, perm, shape = stored[layout.ONNX], layout.TO_NHWC, layout.nhwc_shape(self.shape(name))
        else:
            source, perm, shape = stored[layout.NHWC], layout.TO_NCHW, list(self.shape(name))
        out = self.graph.tensor(f"{name}/{wanted}", shape, self.dtype(name))
        self.reorder(source, out, perm)
        stored[wanted] = out
        return out

    def reorder(self, source: int, out: int, perm: tuple[int, ...] | list[int]) -> None:
        """``out = transpose(source, perm)``, as a RESHAPE when that keeps the element order."""
        in_shape = self.graph.shape(source)
        if layout.is_pure_reshape(in_shape, perm):
            self.reshape(source, out)
        else:
            self.transposes += 1
            self.graph.op(OP.TRANSPOSE, [source, self.graph.constant("perm", np.array(perm, np.int32))], [out])

    def reshape(self, source: int, out: int) -> None:
        shape = self.graph.shape(out)
        options = schema.ReshapeOptionsT()
        options.newShape = shape
        self.graph.op(OP.RESHAPE, [source, self.graph.constant("shape", np.array(shape, np.int32))], [out], options)

    def dtype(self, name: str) -> np.dtype:
        dt = self.prepared.dtypes.get(name, np.dtype(np.float32))
        return np.dtype(np.int32) if dt == np.int64 else dt

    def new(self, name: str, wanted: str = layout.ONNX, shape: list[int] | None = None) -> int:
        """A fresh TFLite tensor for ONNX value ``name`` in layout ``wanted``, recorded as that value."""
        onnx_shape = list(self.shape(name)) if shape is None else shape
        tfl_shape = layout.nhwc_shape(onnx_shape) if wanted == layout.NHWC else onnx_shape
        index = self.graph.tensor(name, tfl_shape, self.dtype(name))
        self.set(name, index, wanted)
        return index

    def set(self, name: str, index: int, wanted: str = layout.ONNX) -> None:
        self.values[name] = {wanted: index}

    def alias(self, name: str, source: str) -> None:
        """Value ``name`` is the same tensor(s) as ``source`` (Identity, Dropout, a no-op Reshape)."""
        if self.is_const(source):
            self.prepared.constants[name] = self.const(source)
            return
        self.values[name] = self.values[source]

    # --- fusion --------------------------------------------------------------------------------

    def take_activation(self, node: onnx.NodeProto) -> tuple[int, str]:
        """Fuse a following Relu/Relu6/Clip(-1, 1) into ``node``: (activation code, ONNX name of the result)."""
        out = node.output[0]
        graph_outputs = {o.name for o in self.prepared.model.graph.output}
        users = self.prepared.consumers(out)
        if out in graph_outputs or len(users) != 1:
            return ACT.NONE, out
        user = users[0]
        code = activation_code(user, self)
        if code is None:
            return ACT.NONE, out
        self.skipped.add(user.name)
        return code, user.output[0]


def activation_code(node: onnx.NodeProto, ctx: Context) -> int | None:
    """The fused-activation code ``node`` is equivalent to, or None."""
    if node.op_type == "Relu":
        return ACT.RELU
    if node.op_type == "Clip":
        low, high = clip_bounds(node, ctx)
        if (low, high) == (0.0, 6.0):
            return ACT.RELU6
        if (low, high) == (-1.0, 1.0):
            return ACT.RELU_N1_TO_1
        if low == 0.0 and high == float("inf"):
            return ACT.RELU
    return None


def clip_bounds(node: onnx.NodeProto, ctx: Context) -> tuple[float, float]:
    """Clip's (min, max): attributes before opset 11, constant inputs since."""
    a = attributes(node)
    bounds = [float(a.get("min", -np.inf)), float(a.get("max", np.inf))]
    for i in (1, 2):
        if len(node.input) > i and node.input[i]:
            if not ctx.is_const(node.input[i]):
                raise UnsupportedOp(node.name, node.op_type, "min and max must be constants", attribute="min/max")
            bounds[i - 1] = float(ctx.const(node.input[i]))
    return bounds[0], bounds[1]


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _tflite_const(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if value.dtype == np.float64:
        return value.astype(np.float32)
    if value.dtype == np.int64:
        return value.astype(np.int32)
    return value
