"""Elementwise ops: binary arithmetic with broadcasting, activations, Softmax, Identity.

Elementwise ops do not care about axis order, so they run in whatever layout their 4-D inputs
already have: in NHWC after a Conv, with constants rearranged to broadcast against NHWC at
conversion time (a bias ``[C, 1, 1]`` becomes ``[1, 1, 1, C]``).
"""

from __future__ import annotations

import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as schema

from edgefleet.compiler.tflite import layout
from edgefleet.compiler.tflite.context import ACT, OP, Context, attributes, clip_bounds
from edgefleet.compiler.tflite.errors import UnsupportedOp
from edgefleet.compiler.tflite.ops import converts

_BINARY = {
    "Add": (OP.ADD, schema.AddOptionsT),
    "Sub": (OP.SUB, schema.SubOptionsT),
    "Mul": (OP.MUL, schema.MulOptionsT),
    "Div": (OP.DIV, schema.DivOptionsT),
}
_PLAIN_BINARY = {"Pow": OP.POW, "Max": OP.MAXIMUM, "Min": OP.MINIMUM, "PRelu": OP.PRELU}
_UNARY = {
    "Relu": OP.RELU,
    "Sigmoid": OP.LOGISTIC,
    "Tanh": OP.TANH,
    "HardSwish": OP.HARD_SWISH,
    "Exp": OP.EXP,
    "Sqrt": OP.SQRT,
    "Abs": OP.ABS,
    "Neg": OP.NEG,
    "Log": OP.LOG,
}


def common_layout(ctx: Context, names: list[str], out: str) -> str:
    """NHWC when the output is 4-D and an input activation already is NHWC and every activation is 4-D."""
    if ctx.rank(out) != 4:
        return layout.ONNX
    activations = [n for n in names if n and not ctx.is_const(n)]
    if any(ctx.preferred_layout(n) == layout.NHWC for n in activations) and all(ctx.rank(n) == 4 for n in activations):
        return layout.NHWC
    return layout.ONNX


@converts(*_BINARY)
def binary(ctx: Context, node: onnx.NodeProto) -> None:
    code, options_type = _BINARY[node.op_type]
    where = common_layout(ctx, list(node.input), node.output[0])
    inputs = [ctx.get(n, where) for n in node.input]
    options = options_type()
    activation, out = ctx.take_activation(node)
    options.fusedActivationFunction = activation
    ctx.graph.op(code, inputs, [ctx.new(out, where)], options)


@converts(*_PLAIN_BINARY)
def plain_binary(ctx: Context, node: onnx.NodeProto) -> None:
    if node.op_type in ("Max", "Min") and len(node.input) != 2:
        raise UnsupportedOp(node.name, node.op_type, f"only two inputs are supported, not {len(node.input)}")
    where = common_layout(ctx, list(node.input), node.output[0])
    inputs = [ctx.get(n, where) for n in node.input]
    if node.op_type == "PRelu" and ctx.is_const(node.input[1]):
        # TFLite's PRELU wants alpha shaped like the input without the batch axis (broadcast is limited).
        alpha = np.broadcast_to(ctx.const(node.input[1]), ctx.shape(node.output[0])).astype(np.float32)
        alpha = layout.to_nhwc(alpha) if where == layout.NHWC else alpha
        inputs[1] = ctx.graph.constant(f"{node.input[1]}/alpha", alpha[0])
    ctx.graph.op(_PLAIN_BINARY[node.op_type], inputs, [ctx.new(node.output[0], where)])


@converts(*_UNARY)
def unary(ctx: Context, node: onnx.NodeProto) -> None:
    where = ctx.preferred_layout(node.input[0])
    ctx.graph.op(_UNARY[node.op_type], [ctx.get(node.input[0], where)], [ctx.new(node.output[0], where)])


# Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7 over the real line, well inside float32 tests' 1e-4.
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@converts("Erf")
def erf(ctx: Context, node: onnx.NodeProto) -> None:
    """erf(x) = sign(x) (1 - t (a1 + t (a2 + ... + t a5)) exp(-x^2)), t = 1 / (1 + p |x|), in builtin ops.

    TFLite has no ERF builtin; an Erf inside the exact GELU pattern becomes one GELU during
    preparation instead (fold.py). The polynomial runs in any layout, so it keeps x's.
    """
    where = ctx.preferred_layout(node.input[0])
    x = ctx.get(node.input[0], where)
    shape = ctx.graph.shape(x)
    out = node.output[0]
    ones = [1] * len(shape)

    def const(name: str, value: float) -> int:
        return ctx.graph.constant(name, np.full(ones, value, np.float32))

    def step(code: int, inputs: list[int], label: str, options: object | None = None) -> int:
        t = ctx.graph.tensor(f"{out}/{label}", shape)
        ctx.graph.op(code, inputs, [t], options)
        return t

    absolute = step(OP.ABS, [x], "abs")
    denominator = step(OP.ADD, [step(OP.MUL, [absolute, const("erf_p", _ERF_P)], "p_abs", schema.MulOptionsT()),
                                const("one", 1.0)], "denominator", schema.AddOptionsT())
    t = step(OP.DIV, [const("one", 1.0), denominator], "t", schema.DivOptionsT())
    poly = const("erf_a5", _ERF_A[4])
    for i, a in enumerate(reversed(_ERF_A[:4])):
        poly = step(OP.MUL, [poly, t], f"horner{i}", schema.MulOptionsT())
        poly = step(OP.ADD, [poly, const(f"erf_a{4 - i}", a)], f"poly{i}", schema.AddOptionsT())
    poly = step(OP.MUL, [poly, t], "poly_t", schema.MulOptionsT())
    gauss = step(OP.EXP, [step(OP.NEG, [step(OP.MUL, [x, x], "square", schema.MulOptionsT())], "neg_square")], "gauss")
    tail = step(OP.MUL, [poly, gauss], "tail", schema.MulOptionsT())
    magnitude = step(OP.SUB, [const("one", 1.0), tail], "magnitude", schema.SubOptionsT())
    ctx.graph.op(OP.MUL, [step(OP.SIGN, [x], "sign"), magnitude], [ctx.new(out, where)], schema.MulOptionsT())


@converts("LeakyRelu")
def leaky_relu(ctx: Context, node: onnx.NodeProto) -> None:
    where = ctx.preferred_layout(node.input[0])
    options = schema.LeakyReluOptionsT()
    options.alpha = float(attributes(node).get("alpha", 0.01))
    ctx.graph.op(OP.LEAKY_RELU, [ctx.get(node.input[0], where)], [ctx.new(node.output[0], where)], options)


@converts("Clip")
def clip(ctx: Context, node: onnx.NodeProto) -> None:
    where = ctx.preferred_layout(node.input[0])
    x = ctx.get(node.input[0], where)
    low, high = clip_bounds(node, ctx)
    named = {(0.0, 6.0): OP.RELU6, (-1.0, 1.0): OP.RELU_N1_TO_1, (0.0, np.inf): OP.RELU}
    if (low, high) in named:
        ctx.graph.op(named[(low, high)], [x], [ctx.new(node.output[0], where)])
        return
    _clamp(ctx, x, node.output[0], where, low, high)


def _clamp(ctx: Context, x: int, out: str, where: str, low: float, high: float) -> None:
    shape = ctx.graph.shape(x)

    def bound(name: str, value: float) -> int:
        # Same rank as x: ai-edge-quantizer quantizes a bound with x's parameters and rejects a rank-1 one.
        return ctx.graph.constant(name, np.full([1] * len(shape), value, np.float32))

    if low > -np.inf and high < np.inf:
        mid = ctx.graph.tensor(f"{out}/max", shape)
        ctx.graph.op(OP.MAXIMUM, [x, bound("low", low)], [mid])
        ctx.graph.op(OP.MINIMUM, [mid, bound("high", high)], [ctx.new(out, where)])
    elif low > -np.inf:
        ctx.graph.op(OP.MAXIMUM, [x, bound("low", low)], [ctx.new(out, where)])
    elif high < np.inf:
        ctx.graph.op(OP.MINIMUM, [x, bound("high", high)], [ctx.new(out, where)])
    else:
        ctx.set(out, x, where)


@converts("HardSigmoid")
def hard_sigmoid(ctx: Context, node: onnx.NodeProto) -> None:
    """max(0, min(1, alpha * x + beta)) as relu6(6 alpha x + 6 beta) / 6: MUL, ADD with fused RELU6, MUL.

    Not MAXIMUM/MINIMUM: ai-edge-quantizer has no int8 MINIMUM, so a clamp to [0, 1] would leave a
    float island (DEQUANTIZE, MINIMUM, QUANTIZE) in every MobileNetV3-style block of an int8 model.
    """
    a = attributes(node)
    where = ctx.preferred_layout(node.input[0])
    x = ctx.get(node.input[0], where)
    shape = ctx.graph.shape(x)
    rank_one = [1] * len(shape)
    scaled = ctx.graph.tensor(f"{node.output[0]}/scaled", shape)
    alpha, beta = 6 * a.get("alpha", 0.2), 6 * a.get("beta", 0.5)
    ctx.graph.op(OP.MUL, [x, ctx.graph.constant("alpha6", np.full(rank_one, alpha, np.float32))], [scaled], schema.MulOptionsT())
    shifted = ctx.graph.tensor(f"{node.output[0]}/relu6", shape)
    add = schema.AddOptionsT()
    add.fusedActivationFunction = schema.ActivationFunctionType.RELU6
    ctx.graph.op(OP.ADD, [scaled, ctx.graph.constant("beta6", np.full(rank_one, beta, np.float32))], [shifted], add)
    sixth = ctx.graph.constant("one_sixth", np.full(rank_one, 1 / 6, np.float32))
    ctx.graph.op(OP.MUL, [shifted, sixth], [ctx.new(node.output[0], where)], schema.MulOptionsT())


@converts("Softmax")
def softmax(ctx: Context, node: onnx.NodeProto) -> None:
    rank = ctx.rank(node.input[0])
    opset = next((o.version for o in ctx.prepared.model.opset_import if o.domain in ("", "ai.onnx")), 17)
    axis = int(attributes(node).get("axis", -1 if opset >= 13 else 1)) % rank
    if opset < 13 and int(np.prod(ctx.shape(node.input[0])[axis + 1 :])) != 1:
        # Before opset 13, Softmax normalised over all axes from ``axis`` on (as a 2-D matrix).
        raise UnsupportedOp(node.name, node.op_type, f"opset-{opset} softmax over axes {axis}.. of a rank-{rank} tensor "
                            "normalises several axes at once; re-export with opset 13+ or a trailing axis",
                            attribute="axis")
    options = schema.SoftmaxOptionsT()
    options.beta = 1.0
    if rank == 4 and axis == 1 and ctx.preferred_layout(node.input[0]) == layout.NHWC:
        x, where = ctx.get(node.input[0], layout.NHWC), layout.NHWC  # the channel axis is last in NHWC
    elif axis == rank - 1:
        x, where = ctx.get(node.input[0]), layout.ONNX
    else:
        raise UnsupportedOp(node.name, node.op_type, f"softmax over axis {axis} of a rank-{rank} tensor: TFLite "
                            "normalises over the last axis only", attribute="axis")
    ctx.graph.op(OP.SOFTMAX, [x], [ctx.new(node.output[0], where)], options)


@converts("Gelu")
def gelu(ctx: Context, node: onnx.NodeProto) -> None:
    """ONNX Gelu (opset 20), or the Erf pattern ``prepare`` fused into one node."""
    approximate = attributes(node).get("approximate", b"none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    if approximate not in ("none", "tanh"):
        raise UnsupportedOp(node.name, node.op_type, f"approximate={approximate!r}", attribute="approximate")
    where = ctx.preferred_layout(node.input[0])
    options = schema.GeluOptionsT()
    options.approximate = approximate == "tanh"
    ctx.graph.op(OP.GELU, [ctx.get(node.input[0], where)], [ctx.new(node.output[0], where)], options)


@converts("LayerNormalization")
def layer_norm(ctx: Context, node: onnx.NodeProto) -> None:
    """(x - mean) * rsqrt(var + eps) * scale + bias over the axes from ``axis`` on, in the ONNX layout."""
    if len(node.output) > 1 and any(node.output[1:]):
        raise UnsupportedOp(node.name, node.op_type, "the Mean and InvStdDev outputs are not supported")
    a = attributes(node)
    rank = ctx.rank(node.input[0])
    axis = int(a.get("axis", -1)) % rank
    x = ctx.get(node.input[0])
    shape = ctx.graph.shape(x)
    reduced = [d if i < axis else 1 for i, d in enumerate(shape)]
    axes = ctx.graph.constant("axes", np.arange(axis, rank, dtype=np.int32))
    keep = schema.ReducerOptionsT()
    keep.keepDims = True
    g = ctx.graph
    name = node.name

    def step(code: int, inputs: list[int], out_shape: list[int], what: str, options: object | None = None) -> int:
        out = g.tensor(f"{name}/{what}", out_shape)
        g.op(code, inputs, [out], options)
        return out

    mean = step(OP.MEAN, [x, axes], reduced, "mean", keep)
    centred = step(OP.SUB, [x, mean], shape, "centred", schema.SubOptionsT())
    squared = step(OP.MUL, [centred, centred], shape, "squared", schema.MulOptionsT())
    var = step(OP.MEAN, [squared, axes], reduced, "var", keep)
    eps = g.constant("epsilon", np.array(float(a.get("epsilon", 1e-5)), np.float32))
    inv = step(OP.RSQRT, [step(OP.ADD, [var, eps], reduced, "var_eps", schema.AddOptionsT())], reduced, "rsqrt")
    normed = step(OP.MUL, [centred, inv], shape, "normed", schema.MulOptionsT())
    has_bias = len(node.input) > 2 and bool(node.input[2])
    activation, out_name = ctx.take_activation(node) if has_bias else (ACT.NONE, node.output[0])
    scaled_options = schema.MulOptionsT()
    if not has_bias:
        g.op(OP.MUL, [normed, ctx.get(node.input[1])], [ctx.new(out_name)], scaled_options)
        return
    scaled = step(OP.MUL, [normed, ctx.get(node.input[1])], shape, "scaled", scaled_options)
    options = schema.AddOptionsT()
    options.fusedActivationFunction = activation
    g.op(OP.ADD, [scaled, ctx.get(node.input[2])], [ctx.new(out_name)], options)


@converts("Identity", "Dropout")
def identity(ctx: Context, node: onnx.NodeProto) -> None:
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
        raise UnsupportedOp(node.name, node.op_type, "the mask output is used; only inference Dropout is supported")
    ctx.alias(node.output[0], node.input[0])
