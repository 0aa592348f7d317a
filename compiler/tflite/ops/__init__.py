"""ONNX op converters, one module per family; ``CONVERTERS`` maps an ONNX op type to its function.

    nn.py           Conv (plain, depthwise, grouped), ConvTranspose, Gemm, MatMul, pools, BatchNormalization
    elementwise.py  Add/Sub/Mul/Div/Pow with broadcasting, activations, Softmax
    shape.py        Reshape, Flatten, Transpose, Squeeze/Unsqueeze, Concat, Pad, Split, Slice, Resize, reductions

A converter takes ``(ctx, node)``, asks ``ctx.get`` for inputs in the layout it needs, adds
operators on ``ctx.graph`` and records outputs with ``ctx.new``/``ctx.set``; anything it cannot map
raises ``UnsupportedOp`` naming the node, the op type and the attribute.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from edgefleet.compiler.tflite.context import Context

Converter = Callable[[Context, onnx.NodeProto], None]
CONVERTERS: dict[str, Converter] = {}


def converts(*op_types: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            CONVERTERS[op_type] = fn
        return fn

    return register


def load_all() -> dict[str, Converter]:
    """Import every converter module (they register themselves) and return the registry."""
    from edgefleet.compiler.tflite.ops import elementwise, nn, shape  # noqa: F401

    return CONVERTERS
