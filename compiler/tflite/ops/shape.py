"""Ops that move data around: Reshape family, Transpose, Concat, Pad, Split, Slice, Resize, reductions, Gather, Cast.

Reshape, Flatten, Squeeze and Unsqueeze depend on element order, so they read their input in the
ONNX layout (a TRANSPOSE back from NHWC is inserted unless only size-1 axes move, e.g. after a
global pool). The others remap their axes to NHWC when their input already is NHWC.
"""

from __future__ import annotations

import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as schema

from edgefleet.compiler.tflite import layout
from edgefleet.compiler.tflite.context import OP, Context, attributes
from edgefleet.compiler.tflite.errors import UnsupportedOp
from edgefleet.compiler.tflite.ops import converts
from edgefleet.compiler.tflite.ops.elementwise import common_layout


def _opset(ctx: Context) -> int:
    return next((o.version for o in ctx.prepared.model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _const_input(ctx: Context, node: onnx.NodeProto, index: int, what: str) -> np.ndarray | None:
    if len(node.input) <= index or not node.input[index]:
        return None
    if not ctx.is_const(node.input[index]):
        raise UnsupportedOp(node.name, node.op_type, f"{what} must be constant after folding", attribute=what)
    return ctx.const(node.input[index])


@converts("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: Context, node: onnx.NodeProto) -> None:
    name = node.input[0]
    if ctx.rank(name) == 4 and not ctx.stored_in(name, layout.ONNX) and layout.is_pure_reshape(
        layout.nhwc_shape(ctx.shape(name)), layout.TO_NCHW
    ):
        x = ctx.get(name, layout.NHWC)  # same element order as NCHW (e.g. after a global pool): reshape directly
    else:
        x = ctx.get(name, layout.ONNX)
    out_shape = list(ctx.shape(node.output[0]))
    if ctx.graph.shape(x) == out_shape:
        ctx.set(node.output[0], x)
        return
    ctx.reshape(x, ctx.new(node.output[0]))


@converts("Transpose")
def transpose(ctx: Context, node: onnx.NodeProto) -> None:
    rank = ctx.rank(node.input[0])
    perm = list(attributes(node).get("perm", list(range(rank))[::-1]))
    if rank == 4 and ctx.preferred_layout(node.input[0]) == layout.NHWC:
        source = ctx.get(node.input[0], layout.NHWC)
        perm = [layout.TO_NCHW[p] for p in perm]  # compose with NHWC -> NCHW
    else:
        source = ctx.get(node.input[0])
    if perm == sorted(perm):
        ctx.set(node.output[0], source)
        return
    ctx.reorder(source, ctx.new(node.output[0]), perm)


@converts("Concat")
def concat(ctx: Context, node: onnx.NodeProto) -> None:
    rank = ctx.rank(node.output[0])
    axis = int(attributes(node)["axis"]) % rank
    where = common_layout(ctx, list(node.input), node.output[0])
    options = schema.ConcatenationOptionsT()
    options.axis = layout.nhwc_axis(axis) if where == layout.NHWC else axis
    activation, out_name = ctx.take_activation(node)
    options.fusedActivationFunction = activation
    inputs = [ctx.get(n, where) for n in node.input if n and int(np.prod(ctx.shape(n))) > 0]
    ctx.graph.op(OP.CONCATENATION, inputs, [ctx.new(out_name, where)], options)


def _axes_layout(ctx: Context, name: str) -> str:
    return layout.NHWC if ctx.rank(name) == 4 and ctx.preferred_layout(name) == layout.NHWC else layout.ONNX


def _tfl_axis(axis: int, rank: int, where: str) -> int:
    return layout.nhwc_axis(axis) if where == layout.NHWC else axis % rank


@converts("Pad")
def pad(ctx: Context, node: onnx.NodeProto) -> None:
    a = attributes(node)
    rank = ctx.rank(node.input[0])
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _const_input(ctx, node, 1, "pads") if _opset(ctx) >= 11 else np.array(a.get("pads"))
    value = _const_input(ctx, node, 2, "constant_value")
    axes = _const_input(ctx, node, 3, "axes")
    axes_list = [int(x) % rank for x in axes] if axes is not None else list(range(rank))
    assert pads is not None
    pairs = np.zeros((rank, 2), np.int64)
    for i, ax in enumerate(axes_list):
        pairs[ax] = (pads[i], pads[i + len(axes_list)])
    if (pairs < 0).any():
        raise UnsupportedOp(node.name, node.op_type, "negative pads (cropping) are not supported", attribute="pads")
    where = _axes_layout(ctx, node.input[0])
    if where == layout.NHWC:
        pairs = pairs[list(layout.TO_NHWC)]
    x = ctx.get(node.input[0], where)
    out = ctx.new(node.output[0], where)
    paddings = ctx.graph.constant("paddings", pairs.astype(np.int32))
    fill = float(value) if value is not None and value.size else float(a.get("value", 0.0))
    if mode == "constant" and fill == 0.0:
        ctx.graph.op(OP.PAD, [x, paddings], [out], schema.PadOptionsT())
    elif mode == "constant":
        ctx.graph.op(OP.PADV2, [x, paddings, ctx.graph.constant("pad_value", np.array(fill, np.float32))], [out],
                     schema.PadV2OptionsT())
    elif mode == "reflect":
        options = schema.MirrorPadOptionsT()
        options.mode = schema.MirrorPadMode.REFLECT
        ctx.graph.op(OP.MIRROR_PAD, [x, paddings], [out], options)
    else:
        raise UnsupportedOp(node.name, node.op_type, f"mode {mode!r} is not supported (constant and reflect are)",
                            attribute="mode")


@converts("Split")
def split(ctx: Context, node: onnx.NodeProto) -> None:
    a = attributes(node)
    rank = ctx.rank(node.input[0])
    axis = int(a.get("axis", 0)) % rank
    sizes = [ctx.shape(o)[axis] for o in node.output]
    where = _axes_layout(ctx, node.input[0])
    x = ctx.get(node.input[0], where)
    outs = [ctx.new(o, where) for o in node.output]
    options = schema.SplitVOptionsT()
    options.numSplits = len(outs)
    ctx.graph.op(
        OP.SPLIT_V,
        [x, ctx.graph.constant("size_splits", np.array(sizes, np.int32)),
         ctx.graph.constant("axis", np.array(_tfl_axis(axis, rank, where), np.int32))],
        outs,
        options,
    )


@converts("Slice")
def slice_(ctx: Context, node: onnx.NodeProto) -> None:
    shape = ctx.shape(node.input[0])
    rank = len(shape)
    starts = _const_input(ctx, node, 1, "starts")
    ends = _const_input(ctx, node, 2, "ends")
    axes = _const_input(ctx, node, 3, "axes")
    steps = _const_input(ctx, node, 4, "steps")
    assert starts is not None and ends is not None
    axes_list = [int(x) % rank for x in (axes if axes is not None else range(len(starts)))]
    begin, end, stride = [0] * rank, list(shape), [1] * rank
    for i, ax in enumerate(axes_list):
        step = int(steps[i]) if steps is not None else 1
        if step <= 0:
            raise UnsupportedOp(node.name, node.op_type, f"step {step} is not supported (positive steps are)",
                                attribute="steps")
        size = shape[ax]
        s, e = int(starts[i]), int(ends[i])
        s = min(max(s + size if s < 0 else s, 0), size)
        e = min(max(e + size if e < 0 else e, 0), size)
        begin[ax], end[ax], stride[ax] = s, e, step
    where = _axes_layout(ctx, node.input[0])
    if where == layout.NHWC:
        begin, end, stride = ([v[i] for i in layout.TO_NHWC] for v in (begin, end, stride))
    x = ctx.get(node.input[0], where)
    consts = [ctx.graph.constant(n, np.array(v, np.int32)) for n, v in (("begin", begin), ("end", end), ("strides", stride))]
    ctx.graph.op(OP.STRIDED_SLICE, [x, *consts], [ctx.new(node.output[0], where)], schema.StridedSliceOptionsT())


@converts("Resize", "Upsample")
def resize(ctx: Context, node: onnx.NodeProto) -> None:
    a = attributes(node)

    def text(key: str, default: str) -> str:
        v = a.get(key, default)
        return v.decode() if isinstance(v, bytes) else v

    mode = text("mode", "nearest")
    ctm = text("coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    nearest_mode = text("nearest_mode", "round_prefer_floor")
    if ctx.rank(node.input[0]) != 4:
        raise UnsupportedOp(node.name, node.op_type, "only 4-D NCHW inputs are supported")
    n, c, h, w = ctx.shape(node.input[0])
    on, oc, oh, ow = ctx.shape(node.output[0])
    if (on, oc) != (n, c):
        raise UnsupportedOp(node.name, node.op_type, "resizing the batch or channel axis is not supported", attribute="scales")
    x = ctx.get(node.input[0], layout.NHWC)
    size = ctx.graph.constant("size", np.array([oh, ow], np.int32))
    out = ctx.new(node.output[0], layout.NHWC)
    if mode == "nearest":
        integer = oh % h == 0 and ow % w == 0
        rounding = nearest_mode in ("round_prefer_floor", "round_prefer_ceil")
        ok = integer and ((ctm == "asymmetric" and nearest_mode == "floor")
                          or (ctm in ("half_pixel", "pytorch_half_pixel") and rounding))
        if not ok:
            raise UnsupportedOp(node.name, node.op_type, f"nearest resize with coordinate_transformation_mode={ctm!r}, "
                                f"nearest_mode={nearest_mode!r} and scale {oh / h}x{ow / w}: only integer upscaling with "
                                "asymmetric+floor or half_pixel+round is supported", attribute="coordinate_transformation_mode")
        ctx.graph.op(OP.RESIZE_NEAREST_NEIGHBOR, [x, size], [out], schema.ResizeNearestNeighborOptionsT())
    elif mode == "linear":
        options = schema.ResizeBilinearOptionsT()
        if ctm == "align_corners":
            options.alignCorners = True
        elif ctm in ("half_pixel", "pytorch_half_pixel"):
            options.halfPixelCenters = True
        elif ctm != "asymmetric":
            raise UnsupportedOp(node.name, node.op_type, f"linear resize with coordinate_transformation_mode={ctm!r}",
                                attribute="coordinate_transformation_mode")
        ctx.graph.op(OP.RESIZE_BILINEAR, [x, size], [out], options, version=3 if options.halfPixelCenters else 1)
    else:
        raise UnsupportedOp(node.name, node.op_type, f"mode {mode!r} is not supported", attribute="mode")


_REDUCE = {"ReduceMean": OP.MEAN, "ReduceMax": OP.REDUCE_MAX, "ReduceMin": OP.REDUCE_MIN, "ReduceSum": OP.SUM}


@converts(*_REDUCE)
def reduce(ctx: Context, node: onnx.NodeProto) -> None:
    a = attributes(node)
    rank = ctx.rank(node.input[0])
    axes = a.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = _const_input(ctx, node, 1, "axes")
    if axes is None or len(axes) == 0:
        if a.get("noop_with_empty_axes", 0):
            ctx.alias(node.output[0], node.input[0])
            return
        axes = list(range(rank))
    axes_list = sorted(int(x) % rank for x in axes)
    keep = bool(a.get("keepdims", 1))
    where = _axes_layout(ctx, node.input[0])
    if where == layout.NHWC and not keep:
        remaining = [ax for ax in layout.TO_NHWC if ax not in axes_list]
        if remaining != sorted(remaining):  # the kept axes would come out in NHWC order
            where = layout.ONNX
    out_where = where if keep else layout.ONNX
    options = schema.ReducerOptionsT()
    options.keepDims = keep
    tfl_axes = np.array(sorted(_tfl_axis(ax, rank, where) for ax in axes_list), np.int32)
    ctx.graph.op(_REDUCE[node.op_type], [ctx.get(node.input[0], where), ctx.graph.constant("axes", tfl_axes)],
                 [ctx.new(node.output[0], out_where)], options)


@converts("Gather")
def gather(ctx: Context, node: onnx.NodeProto) -> None:
    rank = ctx.rank(node.input[0])
    axis = int(attributes(node).get("axis", 0)) % rank
    indices = _const_input(ctx, node, 1, "indices")
    if indices is None:
        raise UnsupportedOp(node.name, node.op_type, "indices are required")
    indices = np.where(indices < 0, indices + ctx.shape(node.input[0])[axis], indices).astype(np.int32)
    options = schema.GatherOptionsT()
    options.axis = axis
    ctx.graph.op(OP.GATHER, [ctx.get(node.input[0]), ctx.graph.constant("indices", indices)], [ctx.new(node.output[0])],
                 options)


@converts("Cast")
def cast(ctx: Context, node: onnx.NodeProto) -> None:
    source = ctx.dtype(node.input[0])
    target = ctx.dtype(node.output[0])
    where = ctx.preferred_layout(node.input[0])
    if source == target:
        ctx.alias(node.output[0], node.input[0])
        return
    if target not in (np.float32, np.int32):
        raise UnsupportedOp(node.name, node.op_type, f"cast to {target} is not supported", attribute="to")
    ctx.graph.op(OP.CAST, [ctx.get(node.input[0], where)], [ctx.new(node.output[0], where)], schema.CastOptionsT())
