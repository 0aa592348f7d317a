"""Layers with weights or windows: Conv, ConvTranspose, Gemm, MatMul, pools, BatchNormalization.

Weights are rearranged once at conversion time: CONV_2D takes ``[O, kH, kW, I]``,
DEPTHWISE_CONV_2D ``[1, kH, kW, C*M]``, TRANSPOSE_CONV ``[O, kH, kW, I]`` and FULLY_CONNECTED
``[O, I]``. ONNX padding becomes SAME when it is exactly TensorFlow's SAME split (the extra pixel
after), VALID when it is zero, and otherwise an explicit PAD (PADV2 with the lowest float for max
pooling) followed by a VALID op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as schema

from edgefleet.compiler.tflite import layout
from edgefleet.compiler.tflite.context import ACT, OP, Context, attributes
from edgefleet.compiler.tflite.errors import UnsupportedOp
from edgefleet.compiler.tflite.ops import converts

PAD = schema.Padding


def _spatial(ctx: Context, node: onnx.NodeProto) -> None:
    if ctx.rank(node.input[0]) != 4:
        raise UnsupportedOp(node.name, node.op_type, f"a rank-{ctx.rank(node.input[0])} input is not supported: TFLite "
                            "has 2-D kernels (1-D Conv and pools run as 2-D ones; 3-D only for Conv, as CONV_3D)",
                            attribute="kernel_shape")


def _window(
    ctx: Context, node: onnx.NodeProto, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> tuple[int, list[int] | None]:
    """(TFLite padding, explicit [top, left, bottom, right] pads to apply first or None)."""
    a = attributes(node)
    in_hw = ctx.shape(node.input[0])[2:]
    out_hw = ctx.shape(node.output[0])[2:]
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    same = []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=True):
        out = math.ceil(size / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        same.append((total // 2, total - total // 2))
    if auto_pad == "VALID":
        return PAD.VALID, None
    if auto_pad == "SAME_UPPER":
        return PAD.SAME, None
    if auto_pad == "SAME_LOWER":
        pads = [same[0][1], same[1][1], same[0][0], same[1][0]]
    elif auto_pad == "NOTSET":
        pads = list(a.get("pads", [0, 0, 0, 0]))
    else:
        raise UnsupportedOp(node.name, node.op_type, f"auto_pad {auto_pad!r} is not an ONNX value", attribute="auto_pad")
    expected_same = [math.ceil(size / s) for size, s in zip(in_hw, strides, strict=True)]
    if not any(pads) and _valid_out(in_hw, kernel, strides, dilations, [0, 0, 0, 0]) == list(out_hw):
        return PAD.VALID, None
    if [pads[0], pads[2]] == list(same[0]) and [pads[1], pads[3]] == list(same[1]) and list(out_hw) == expected_same:
        return PAD.SAME, None
    if _valid_out(in_hw, kernel, strides, dilations, pads) != list(out_hw):
        raise UnsupportedOp(node.name, node.op_type, f"output size {list(out_hw)} needs ceil_mode rounding, which "
                            "TFLite pools do not have", attribute="ceil_mode")
    return PAD.VALID, pads


def _valid_out(
    in_hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int], pads: Sequence[int]
) -> list[int]:
    return [
        (size + pads[i] + pads[i + 2] - ((k - 1) * d + 1)) // s + 1
        for i, (size, k, s, d) in enumerate(zip(in_hw, kernel, strides, dilations, strict=True))
    ]


def _pad_nhwc(ctx: Context, x: int, pads: list[int], name: str, value: float = 0.0) -> int:
    """An explicit PAD (PADV2 for a non-zero fill) of NHWC tensor ``x`` by ONNX pads [top, left, bottom, right]."""
    n, h, w, c = ctx.graph.shape(x)
    paddings = np.array([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]], np.int32)
    out = ctx.graph.tensor(f"{name}/pad", [n, h + pads[0] + pads[2], w + pads[1] + pads[3], c])
    if value == 0.0:
        ctx.graph.op(OP.PAD, [x, ctx.graph.constant("paddings", paddings)], [out], schema.PadOptionsT())
    else:
        # One element shaped [1, 1, 1, 1], not a scalar: PADV2 takes either, but ai-edge-quantizer (0.10)
        # quantizes the fill with the output's rank-4 scale and fails on a scalar fill.
        fill = ctx.graph.constant("pad_value", np.full((1, 1, 1, 1), value, np.float32))
        ctx.graph.op(OP.PADV2, [x, ctx.graph.constant("paddings", paddings), fill], [out], schema.PadV2OptionsT())
    return out


@converts("Conv")
def conv(ctx: Context, node: onnx.NodeProto) -> None:
    if not ctx.is_const(node.input[1]):
        raise UnsupportedOp(node.name, node.op_type, "weights must be constant (an initializer)", attribute="W")
    if ctx.rank(node.input[0]) == 5:
        _conv3d(ctx, node)
        return
    _spatial(ctx, node)
    a = attributes(node)
    w = ctx.const(node.input[1]).astype(np.float32)
    out_channels, in_per_group, kh, kw = w.shape
    channels = ctx.shape(node.input[0])[1]
    group = int(a.get("group", 1))
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    bias = (
        ctx.const(node.input[2]).astype(np.float32)
        if len(node.input) > 2 and node.input[2]
        else np.zeros(out_channels, np.float32)
    )
    if len(node.input) > 2 and node.input[2] and not ctx.is_const(node.input[2]):
        raise UnsupportedOp(node.name, node.op_type, "the bias must be constant", attribute="B")
    padding, pads = _window(ctx, node, (kh, kw), strides, dilations)
    x = ctx.get(node.input[0], layout.NHWC)
    if pads is not None:
        x = _pad_nhwc(ctx, x, pads, node.name)
    activation, out_name = ctx.take_activation(node)
    out = ctx.new(out_name, layout.NHWC)

    if group == 1:
        _conv2d(ctx, x, w, bias, out, padding, strides, dilations, activation, node.name)
    elif group == channels and in_per_group == 1:
        options = schema.DepthwiseConv2DOptionsT()
        options.padding, options.strideH, options.strideW = padding, strides[0], strides[1]
        options.dilationHFactor, options.dilationWFactor = dilations[0], dilations[1]
        options.depthMultiplier = out_channels // channels
        options.fusedActivationFunction = activation
        weights = np.ascontiguousarray(np.transpose(w, (1, 2, 3, 0)))  # [1, kH, kW, C*M]
        ctx.graph.op(
            OP.DEPTHWISE_CONV_2D,
            [x, ctx.graph.constant(f"{node.name}/weights", weights), ctx.graph.constant(f"{node.name}/bias", bias)],
            [out],
            options,
            version=2 if dilations != [1, 1] else 1,
        )
    else:
        _grouped(ctx, x, w, bias, out, group, padding, strides, dilations, activation, node.name)


_TO_NDHWC, _TO_NCDHW = (0, 2, 3, 4, 1), (0, 4, 1, 2, 3)


def _conv3d(ctx: Context, node: onnx.NodeProto) -> None:
    """A 3-D Conv as CONV_3D (NDHWC, filter ``[kD, kH, kW, I, O]``) between two TRANSPOSEs.

    Volumes are rare enough that the graph-level NHWC tracking does not cover 5-D tensors: the
    input goes to NDHWC and the output back to NCDHW around each CONV_3D. XNNPACK does not take
    CONV_3D; LiteRT's builtin kernel runs it, float32 only (ai-edge-quantizer leaves it float).
    """
    a = attributes(node)
    w = ctx.const(node.input[1]).astype(np.float32)  # [O, I, kD, kH, kW]
    if int(a.get("group", 1)) != 1:
        raise UnsupportedOp(node.name, node.op_type, f"group={a['group']}: TFLite's CONV_3D has no groups", attribute="group")
    if len(node.input) > 2 and node.input[2] and not ctx.is_const(node.input[2]):
        raise UnsupportedOp(node.name, node.op_type, "the bias must be constant", attribute="B")
    bias = ctx.const(node.input[2]).astype(np.float32) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32)
    strides = list(a.get("strides", [1, 1, 1]))
    dilations = list(a.get("dilations", [1, 1, 1]))
    in_dhw, out_shape = ctx.shape(node.input[0])[2:], list(ctx.shape(node.output[0]))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedOp(node.name, node.op_type, f"auto_pad {auto_pad} is not supported for 3-D Conv; give explicit pads",
                            attribute="auto_pad")
    pads = [0] * 6 if auto_pad == "VALID" else list(a.get("pads", [0] * 6))

    x = ctx.get(node.input[0], layout.ONNX)
    n, c = ctx.shape(node.input[0])[:2]
    x_ndhwc = ctx.graph.tensor(f"{node.name}/ndhwc", [n, *in_dhw, c])
    ctx.reorder(x, x_ndhwc, _TO_NDHWC)
    if any(pads):
        paddings = np.array([[0, 0], *[[pads[i], pads[i + 3]] for i in range(3)], [0, 0]], np.int32)
        padded = ctx.graph.tensor(f"{node.name}/pad", [n, *[d + pads[i] + pads[i + 3] for i, d in enumerate(in_dhw)], c])
        ctx.graph.op(OP.PAD, [x_ndhwc, ctx.graph.constant("paddings", paddings)], [padded], schema.PadOptionsT())
        x_ndhwc = padded
    options = schema.Conv3DOptionsT()
    options.padding = PAD.VALID
    options.strideD, options.strideH, options.strideW = strides
    options.dilationDFactor, options.dilationHFactor, options.dilationWFactor = dilations
    activation, out_name = ctx.take_activation(node)
    options.fusedActivationFunction = activation
    y = ctx.graph.tensor(f"{out_name}/ndhwc", [out_shape[0], *out_shape[2:], out_shape[1]])
    weights = np.ascontiguousarray(np.transpose(w, (2, 3, 4, 1, 0)))
    ctx.graph.op(OP.CONV_3D, [x_ndhwc, ctx.graph.constant(f"{node.name}/weights", weights),
                              ctx.graph.constant(f"{node.name}/bias", bias)], [y], options)
    ctx.reorder(y, ctx.new(out_name, layout.ONNX), _TO_NCDHW)


def _conv2d(
    ctx: Context, x: int, w: np.ndarray, bias: np.ndarray, out: int, padding: int,
    strides: list[int], dilations: list[int], activation: int, name: str,
) -> None:
    options = schema.Conv2DOptionsT()
    options.padding, options.strideH, options.strideW = padding, strides[0], strides[1]
    options.dilationHFactor, options.dilationWFactor = dilations[0], dilations[1]
    options.fusedActivationFunction = activation
    weights = np.ascontiguousarray(np.transpose(w, (0, 2, 3, 1)))  # [O, kH, kW, I]
    ctx.graph.op(
        OP.CONV_2D,
        [x, ctx.graph.constant(f"{name}/weights", weights), ctx.graph.constant(f"{name}/bias", bias)],
        [out],
        options,
    )


def _grouped(
    ctx: Context, x: int, w: np.ndarray, bias: np.ndarray, out: int, group: int, padding: int,
    strides: list[int], dilations: list[int], activation: int, name: str,
) -> None:
    """A grouped convolution as SPLIT on channels, one CONV_2D per group, CONCATENATION."""
    n, h, wd, c = ctx.graph.shape(x)
    per_out = w.shape[0] // group
    split_options = schema.SplitOptionsT()
    split_options.numSplits = group
    parts = [ctx.graph.tensor(f"{name}/group{g}/in", [n, h, wd, c // group]) for g in range(group)]
    ctx.graph.op(OP.SPLIT, [ctx.graph.constant("axis", np.array(3, np.int32)), x], parts, split_options)
    out_shape = ctx.graph.shape(out)
    outs = []
    for g, part in enumerate(parts):
        part_out = ctx.graph.tensor(f"{name}/group{g}/out", [*out_shape[:3], per_out])
        sl = slice(g * per_out, (g + 1) * per_out)
        _conv2d(ctx, part, w[sl], bias[sl], part_out, padding, strides, dilations, ACT.NONE, f"{name}/group{g}")
        outs.append(part_out)
    options = schema.ConcatenationOptionsT()
    options.axis = 3
    options.fusedActivationFunction = activation
    ctx.graph.op(OP.CONCATENATION, outs, [out], options)


@converts("ConvTranspose")
def conv_transpose(ctx: Context, node: onnx.NodeProto) -> None:
    _spatial(ctx, node)
    a = attributes(node)
    if not ctx.is_const(node.input[1]):
        raise UnsupportedOp(node.name, node.op_type, "weights must be constant (an initializer)", attribute="W")
    for attr, ok in (("group", 1), ("dilations", [1, 1])):
        if attr in a and list(np.atleast_1d(a[attr])) != list(np.atleast_1d(ok)):
            raise UnsupportedOp(node.name, node.op_type, f"{attr}={a[attr]} is not supported", attribute=attr)
    if any(a.get("output_padding", [0, 0])):
        raise UnsupportedOp(node.name, node.op_type, "output_padding is not supported", attribute="output_padding")
    w = ctx.const(node.input[1]).astype(np.float32)  # [C_in, C_out, kH, kW]
    _, c_out, kh, kw = w.shape
    strides = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    in_hw = ctx.shape(node.input[0])[2:]
    out_hw = list(ctx.shape(node.output[0])[2:])
    full = [(in_hw[i] - 1) * strides[i] + k for i, k in enumerate((kh, kw))]
    if not any(pads) and "auto_pad" not in a:
        padding = PAD.VALID
    elif out_hw == [in_hw[0] * strides[0], in_hw[1] * strides[1]] and all(
        (pads[i], pads[i + 2]) == ((f - o) // 2, (f - o) - (f - o) // 2) for i, (f, o) in enumerate(zip(full, out_hw, strict=True))
    ):
        padding = PAD.SAME
    else:
        raise UnsupportedOp(node.name, node.op_type, f"pads {pads} are neither VALID nor TensorFlow's SAME split", attribute="pads")
    bias = ctx.const(node.input[2]).astype(np.float32) if len(node.input) > 2 and node.input[2] else np.zeros(c_out, np.float32)
    x = ctx.get(node.input[0], layout.NHWC)
    activation, out_name = ctx.take_activation(node)
    out = ctx.new(out_name, layout.NHWC)
    options = schema.TransposeConvOptionsT()
    options.padding, options.strideH, options.strideW = padding, strides[0], strides[1]
    options.fusedActivationFunction = activation
    weights = np.ascontiguousarray(np.transpose(w, (1, 2, 3, 0)))  # [O, kH, kW, I]
    out_shape = np.array(ctx.graph.shape(out), np.int32)
    ctx.graph.op(
        OP.TRANSPOSE_CONV,
        [ctx.graph.constant("output_shape", out_shape), ctx.graph.constant(f"{node.name}/weights", weights), x,
         ctx.graph.constant(f"{node.name}/bias", bias)],
        [out],
        options,
        version=4 if activation != ACT.NONE else 3,
    )


@converts("MaxPool", "AveragePool")
def pool(ctx: Context, node: onnx.NodeProto) -> None:
    _spatial(ctx, node)
    a = attributes(node)
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOp(node.name, node.op_type, "the Indices output is not supported", attribute="Indices")
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    if dilations != [1, 1]:
        raise UnsupportedOp(node.name, node.op_type, f"dilations {dilations} are not supported", attribute="dilations")
    if a.get("storage_order", 0):
        raise UnsupportedOp(node.name, node.op_type, "storage_order=1 is not supported", attribute="storage_order")
    padding, pads = _window(ctx, node, kernel, strides, dilations)
    x = ctx.get(node.input[0], layout.NHWC)
    is_max = node.op_type == "MaxPool"
    if pads is not None:
        if not is_max and not a.get("count_include_pad", 0):
            raise UnsupportedOp(node.name, node.op_type, f"pads {pads} differ from SAME padding and padded pixels are "
                                "excluded from the average (count_include_pad=0), which TFLite cannot express",
                                attribute="pads")
        x = _pad_nhwc(ctx, x, pads, node.name, float(np.finfo(np.float32).min) if is_max else 0.0)
    elif padding == PAD.SAME and not is_max and a.get("count_include_pad", 0) and any(a.get("pads", [0])):
        # TFLite's SAME average excludes padded pixels; ONNX asked to count them: pad explicitly.
        x = _pad_nhwc(ctx, x, list(a["pads"]), node.name)
        padding = PAD.VALID
    options = schema.Pool2DOptionsT()
    options.padding, options.strideH, options.strideW = padding, strides[0], strides[1]
    options.filterHeight, options.filterWidth = kernel
    activation, out_name = ctx.take_activation(node)
    options.fusedActivationFunction = activation
    ctx.graph.op(OP.MAX_POOL_2D if is_max else OP.AVERAGE_POOL_2D, [x], [ctx.new(out_name, layout.NHWC)], options)


@converts("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx: Context, node: onnx.NodeProto) -> None:
    _spatial(ctx, node)
    options = schema.ReducerOptionsT()
    options.keepDims = True
    code = OP.MEAN if node.op_type == "GlobalAveragePool" else OP.REDUCE_MAX
    axes = ctx.graph.constant("axes_hw", np.array([1, 2], np.int32))
    ctx.graph.op(code, [ctx.get(node.input[0], layout.NHWC), axes], [ctx.new(node.output[0], layout.NHWC)], options)


@converts("Gemm")
def gemm(ctx: Context, node: onnx.NodeProto) -> None:
    a = attributes(node)
    if a.get("transA", 0):
        raise UnsupportedOp(node.name, node.op_type, "transA=1 is not supported", attribute="transA")
    if not ctx.is_const(node.input[1]):
        raise UnsupportedOp(node.name, node.op_type, "B must be constant (an initializer)", attribute="B")
    b = ctx.const(node.input[1]).astype(np.float32)
    weights = (b if a.get("transB", 0) else b.T) * np.float32(a.get("alpha", 1.0))  # [N, K]
    m, n = ctx.shape(node.output[0])
    bias = np.zeros(n, np.float32)
    if len(node.input) > 2 and node.input[2]:
        if not ctx.is_const(node.input[2]):
            raise UnsupportedOp(node.name, node.op_type, "C must be constant (an initializer)", attribute="C")
        c = np.broadcast_to(ctx.const(node.input[2]).astype(np.float32), (m, n)) * np.float32(a.get("beta", 1.0))
        if not np.all(c == c[0]):
            raise UnsupportedOp(node.name, node.op_type, "C differs between rows; only a bias per output is supported",
                                attribute="C")
        bias = np.ascontiguousarray(c[0])
    _fully_connected(ctx, node, node.input[0], weights, bias)


def _fully_connected(ctx: Context, node: onnx.NodeProto, x: str, weights: np.ndarray, bias: np.ndarray | None) -> None:
    options = schema.FullyConnectedOptionsT()
    activation, out_name = ctx.take_activation(node)
    options.fusedActivationFunction = activation
    options.keepNumDims = ctx.rank(x) > 2
    inputs = [ctx.get(x), ctx.graph.constant(f"{node.name}/weights", np.ascontiguousarray(weights))]
    inputs.append(ctx.graph.constant(f"{node.name}/bias", bias) if bias is not None else -1)
    ctx.graph.op(OP.FULLY_CONNECTED, inputs, [ctx.new(out_name)], options, version=5 if options.keepNumDims else 1)


@converts("MatMul")
def matmul(ctx: Context, node: onnx.NodeProto) -> None:
    a_name, b_name = node.input
    if ctx.rank(a_name) < 2 or ctx.rank(b_name) < 2:
        raise UnsupportedOp(node.name, node.op_type, "1-D operands are not supported", attribute="A/B")
    if ctx.is_const(b_name) and ctx.rank(b_name) == 2:
        _fully_connected(ctx, node, a_name, ctx.const(b_name).astype(np.float32).T, None)
        return
    options = schema.BatchMatMulOptionsT()
    ctx.graph.op(OP.BATCH_MATMUL, [ctx.get(a_name), ctx.get(b_name)], [ctx.new(node.output[0])], options)


@converts("BatchNormalization")
def batch_norm(ctx: Context, node: onnx.NodeProto) -> None:
    """A BatchNormalization not folded into a Conv: MUL by scale, ADD shift, per channel."""
    if len(node.output) > 1 and any(node.output[1:]):
        raise UnsupportedOp(node.name, node.op_type, "training-mode outputs are not supported", attribute="training_mode")
    if not all(ctx.is_const(i) for i in node.input[1:5]):
        raise UnsupportedOp(node.name, node.op_type, "scale, bias, mean and variance must be constant")
    eps = float(attributes(node).get("epsilon", 1e-5))
    gamma, beta, mean, var = (ctx.const(i).astype(np.float64) for i in node.input[1:5])
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    rank = ctx.rank(node.input[0])
    where = ctx.preferred_layout(node.input[0]) if rank == 4 else layout.ONNX
    shaped = [v.astype(np.float32).reshape((-1,) + (1,) * (rank - 2)) for v in (scale, shift)]
    if where == layout.NHWC:
        shaped = [layout.broadcast_constant_nhwc(v) for v in shaped]
    x = ctx.get(node.input[0], where)
    scaled = ctx.graph.tensor(f"{node.name}/scaled", ctx.graph.shape(x))
    ctx.graph.op(OP.MUL, [x, ctx.graph.constant(f"{node.name}/scale", shaped[0])], [scaled], schema.MulOptionsT())
    activation, out_name = ctx.take_activation(node)
    options = schema.AddOptionsT()
    options.fusedActivationFunction = activation
    ctx.graph.op(OP.ADD, [scaled, ctx.graph.constant(f"{node.name}/shift", shaped[1])], [ctx.new(out_name, where)], options)
