"""ONNX -> TFLite, op by op: tiny graphs written inline as ONNX text, run in LiteRT and onnxruntime.

Most graphs start with a Conv so the op under test sees an NHWC activation, which is the case the
layout tracking exists for; the ``plain`` ones see an input in the ONNX layout.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgefleet.compiler.errors import CompileError
from edgefleet.compiler.tflite import UnsupportedOp, convert
from edgefleet.compiler.tflite.verify import compare

TOLERANCE = 1e-4
RNG = np.random.default_rng(0)


def _w(*shape: int, positive: bool = False) -> np.ndarray:
    value = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(value) + 0.5 if positive else value


CONV = "c = Conv <pads = [1, 1, 1, 1]> (x, cw)\n"
"""x [1, 3, 8, 8] -> c [1, 4, 8, 8], NHWC inside the converted graph."""
CW = {"cw": _w(4, 3, 3, 3)}


def model(body: str, inputs: dict[str, list[int]] | None = None, *, opset: int = 17, **inits: np.ndarray) -> onnx.ModelProto:
    inputs = inputs or {"x": [1, 3, 8, 8]}
    signature = ", ".join(f"float[{','.join(map(str, s))}] {n}" for n, s in inputs.items())
    ir = 8 if opset <= 17 else 9
    text = f'<ir_version: {ir}, opset_import: ["" : {opset}]>\ntest ({signature}) => (float y) {{\n{body}\n}}'
    m = onnx.parser.parse_model(text)
    m.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items())
    # The text's `float y` reads as a scalar: declare the inferred output shape instead.
    m.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    m.graph.output[0].CopyFrom(inferred.graph.output[0])
    onnx.checker.check_model(m)
    return m


# (id, body, inputs, initializers)
CASES: list[tuple[str, str, dict[str, list[int]] | None, dict[str, np.ndarray]]] = [
    ("gemm_transB", "y = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (x, w, b)", {"x": [1, 16]}, {"w": _w(10, 16), "b": _w(10)}),
    ("gemm", "y = Gemm (x, w, b)", {"x": [2, 16]}, {"w": _w(16, 10), "b": _w(1, 10)}),
    ("matmul", "y = MatMul (x, w)", {"x": [2, 16]}, {"w": _w(16, 5)}),
    ("matmul_add", "m = MatMul (x, w)\ny = Add (m, b)", {"x": [1, 16]}, {"w": _w(16, 5), "b": _w(5)}),
    ("matmul_3d", "y = MatMul (x, w)", {"x": [1, 4, 16]}, {"w": _w(16, 5)}),
    ("batch_matmul", "y = MatMul (x, z)", {"x": [1, 4, 16], "z": [1, 16, 3]}, {}),
    ("add_bias_nhwc", CONV + "y = Add (c, b)", None, {**CW, "b": _w(4, 1, 1)}),
    ("sub_scalar", CONV + "y = Sub (s, c)", None, {**CW, "s": np.array(0.5, np.float32)}),
    ("mul_nhwc", CONV + "y = Mul (c, b)", None, {**CW, "b": _w(1, 4, 1, 1)}),
    ("div_nhwc", CONV + "y = Div (c, b)", None, {**CW, "b": _w(4, 1, 1, positive=True)}),
    ("add_two", CONV + "d = Conv <pads = [1, 1, 1, 1]> (x, cw2)\ny = Add (c, d)", None, {**CW, "cw2": _w(4, 3, 3, 3)}),
    ("add_nhwc_and_input", "c = Conv (x, cw)\ny = Add (c, x)", None, {"cw": _w(3, 3, 1, 1)}),
    ("add_plain", "y = Add (x, b)", {"x": [2, 5]}, {"b": _w(5)}),
    ("pow", "y = Pow (x, e)", {"x": [2, 5]}, {"e": np.array(2.0, np.float32)}),
    ("relu_fused", CONV + "y = Relu (c)", None, CW),
    ("relu6_fused", CONV + "y = Clip (c, lo, hi)", None, {**CW, "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}),
    ("clip_n1_1", CONV + "y = Clip (c, lo, hi)", None, {**CW, "lo": np.array(-1.0, np.float32), "hi": np.array(1.0, np.float32)}),
    ("clip_other", CONV + "y = Clip (c, lo, hi)", None, {**CW, "lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}),
    ("relu_standalone", "y = Relu (x)", None, {}),
    ("sigmoid", CONV + "y = Sigmoid (c)", None, CW),
    ("tanh", CONV + "y = Tanh (c)", None, CW),
    ("leaky_relu", CONV + "y = LeakyRelu <alpha = 0.1> (c)", None, CW),
    ("hard_swish", CONV + "y = HardSwish (c)", None, CW),
    ("hard_sigmoid", CONV + "y = HardSigmoid <alpha = 0.25, beta = 0.4> (c)", None, CW),
    ("prelu", CONV + "y = PRelu (c, s)", None, {**CW, "s": _w(4, 1, 1)}),
    ("exp_sqrt", CONV + "e = Exp (c)\ny = Sqrt (e)", None, CW),
    ("softmax_last", "y = Softmax <axis = -1> (x)", {"x": [2, 7]}, {}),
    ("softmax_channels", CONV + "y = Softmax <axis = 1> (c)", None, CW),
    ("reshape_nhwc", CONV + "y = Reshape (c, s)", None, {**CW, "s": np.array([1, 4, 64], np.int64)}),
    ("flatten_nhwc", CONV + "y = Flatten (c)", None, CW),
    ("conv_no_bias_valid", "y = Conv (x, w)", None, {"w": _w(5, 3, 3, 3)}),
    ("conv_bias_same", "y = Conv <pads = [1, 1, 1, 1]> (x, w, b)", None, {"w": _w(5, 3, 3, 3), "b": _w(5)}),
    ("conv_stride2_pad", "y = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w, b)", None, {"w": _w(5, 3, 3, 3), "b": _w(5)}),
    ("conv_same_upper", "y = Conv <auto_pad = \"SAME_UPPER\", strides = [2, 2]> (x, w)", None, {"w": _w(5, 3, 4, 4)}),
    ("conv_asym_pads", "y = Conv <pads = [0, 1, 2, 1]> (x, w)", None, {"w": _w(5, 3, 3, 3)}),
    ("conv_dilated", "y = Conv <dilations = [2, 2], pads = [2, 2, 2, 2]> (x, w)", None, {"w": _w(5, 3, 3, 3)}),
    ("conv_1x5", "y = Conv <pads = [0, 2, 0, 2]> (x, w)", None, {"w": _w(5, 3, 1, 5)}),
    ("depthwise", CONV + "y = Conv <group = 4, pads = [1, 1, 1, 1]> (c, dw, db)", None, {**CW, "dw": _w(4, 1, 3, 3), "db": _w(4)}),
    ("depthwise_mult2", CONV + "y = Conv <group = 4, strides = [2, 2], pads = [1, 1, 1, 1]> (c, dw)", None, {**CW, "dw": _w(8, 1, 3, 3)}),
    ("grouped", CONV + "y = Conv <group = 2, pads = [1, 1, 1, 1]> (c, gw, gb)", None, {**CW, "gw": _w(6, 2, 3, 3), "gb": _w(6)}),
    ("conv_transpose", CONV + "y = ConvTranspose <strides = [2, 2]> (c, tw, tb)", None, {**CW, "tw": _w(4, 5, 2, 2), "tb": _w(5)}),
    ("conv_transpose_3x3", CONV + "y = ConvTranspose <strides = [1, 1]> (c, tw)", None, {**CW, "tw": _w(4, 2, 3, 3)}),
    ("maxpool", CONV + "y = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c)", None, CW),
    ("maxpool_pads", CONV + "y = MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (c)", None, CW),
    ("avgpool_same", CONV + "y = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (c)", None, CW),
    ("avgpool_count_pad", CONV + "y = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], count_include_pad = 1> (c)", None, CW),
    ("global_avg", CONV + "y = GlobalAveragePool (c)", None, CW),
    ("global_max", CONV + "y = GlobalMaxPool (c)", None, CW),
    ("bn_folded", "c = Conv (x, cw)\ny = BatchNormalization (c, g, b, m, v)", None,
     {"cw": _w(4, 3, 3, 3), "g": _w(4), "b": _w(4), "m": _w(4), "v": _w(4, positive=True)}),
    ("bn_standalone", CONV + "a = Add (c, c)\ny = BatchNormalization (a, g, b, m, v)", None,
     {**CW, "g": _w(4), "b": _w(4), "m": _w(4), "v": _w(4, positive=True)}),
    ("concat_channels", CONV + "d = Relu (x)\ny = Concat <axis = 1> (c, d)", None, CW),
    ("concat_width", CONV + "y = Concat <axis = -1> (c, c)", None, CW),
    ("concat_plain", "y = Concat <axis = 0> (x, x)", {"x": [2, 3]}, {}),
    ("transpose_nhwc", CONV + "y = Transpose <perm = [0, 2, 3, 1]> (c)", None, CW),
    ("transpose_plain", "y = Transpose <perm = [1, 0, 2]> (x)", {"x": [2, 3, 4]}, {}),
    ("identity_dropout", CONV + "d = Dropout (c)\ny = Identity (d)", None, CW),
    ("pad_constant", CONV + "y = Pad (c, p, v)", None, {**CW, "p": np.array([0, 0, 1, 2, 0, 0, 3, 0], np.int64), "v": np.array(0.5, np.float32)}),
    ("pad_reflect", CONV + "y = Pad <mode = \"reflect\"> (c, p)", None, {**CW, "p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}),
    ("squeeze_unsqueeze", CONV + "g = GlobalAveragePool (c)\ns = Squeeze (g, a)\ny = Unsqueeze (s, b)", None,
     {**CW, "a": np.array([2, 3], np.int64), "b": np.array([1], np.int64)}),
    ("reduce_mean_hw", CONV + "y = ReduceMean <axes = [2, 3], keepdims = 0> (c)", None, CW),
    ("reduce_mean_c", CONV + "y = ReduceMean <axes = [1]> (c)", None, CW),
    ("reduce_sum_w", CONV + "y = ReduceSum <keepdims = 0> (c, a)", None, {**CW, "a": np.array([3], np.int64)}),
    ("reduce_max", CONV + "y = ReduceMax <axes = [1, 3], keepdims = 0> (c)", None, CW),
    ("resize_nearest", CONV + "y = Resize <mode = \"nearest\"> (c, , s)", None, {**CW, "s": np.array([1, 1, 2, 2], np.float32)}),
    ("resize_nearest_asym", CONV + "y = Resize <mode = \"nearest\", coordinate_transformation_mode = \"asymmetric\", nearest_mode = \"floor\"> (c, , s)", None,
     {**CW, "s": np.array([1, 1, 2, 3], np.float32)}),
    ("resize_linear", CONV + "y = Resize <mode = \"linear\"> (c, , s)", None, {**CW, "s": np.array([1, 1, 2, 2], np.float32)}),
    ("split", CONV + "a, b = Split <axis = 1> (c, s)\ny = Mul (a, b)", None, {**CW, "s": np.array([2, 2], np.int64)}),
    ("slice", CONV + "y = Slice (c, st, en, ax, sp)", None,
     {**CW, "st": np.array([1, 0], np.int64), "en": np.array([4, -1], np.int64), "ax": np.array([1, 3], np.int64), "sp": np.array([2, 1], np.int64)}),
    ("gelu_erf", CONV + "d = Div (c, r2)\ne = Erf (d)\na = Add (e, one)\nm = Mul (c, a)\ny = Mul (m, half)", None,
     {**CW, "r2": np.array(np.sqrt(2), np.float32), "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)}),
    ("gelu_erf_half_first", "h = Mul (x, half)\nd = Mul (x, r)\ne = Erf (d)\na = Add (one, e)\ny = Mul (h, a)", {"x": [2, 16]},
     {"r": np.array(np.sqrt(0.5), np.float32), "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)}),
    ("erf", "y = Erf (x)", {"x": [2, 64]}, {}),
    ("erf_nhwc", CONV + "y = Erf (c)", None, CW),
    ("conv1d", "y = Conv <pads = [1, 1]> (x, w, b)", {"x": [1, 3, 16]}, {"w": _w(4, 3, 3), "b": _w(4)}),
    ("conv1d_strided_dilated", "y = Conv <strides = [2], dilations = [2], pads = [2, 1]> (x, w)", {"x": [1, 3, 17]}, {"w": _w(5, 3, 3)}),
    ("conv1d_depthwise_chain", "c = Conv <group = 3, pads = [1, 1]> (x, w)\nr = Relu (c)\ny = Conv (r, pw)", {"x": [1, 3, 12]},
     {"w": _w(3, 1, 3), "pw": _w(6, 3, 1)}),
    ("maxpool1d", "y = MaxPool <kernel_shape = [3], strides = [2], pads = [1, 1]> (x)", {"x": [1, 4, 15]}, {}),
    ("avgpool1d", "y = AveragePool <kernel_shape = [2], strides = [2]> (x)", {"x": [1, 4, 16]}, {}),
    ("global_avgpool1d", "y = GlobalAveragePool (x)", {"x": [1, 4, 16]}, {}),
    ("conv3d", "y = Conv <pads = [1, 1, 1, 1, 1, 1]> (x, w, b)", {"x": [1, 2, 4, 6, 6]}, {"w": _w(3, 2, 3, 3, 3), "b": _w(3)}),
    ("conv3d_strided_relu", "c = Conv <strides = [1, 2, 2]> (x, w)\ny = Relu (c)", {"x": [1, 2, 3, 7, 7]}, {"w": _w(4, 2, 2, 3, 3)}),
    ("layer_norm", "y = LayerNormalization <axis = -1, epsilon = 0.001> (x, g, b)", {"x": [1, 4, 16]}, {"g": _w(16), "b": _w(16)}),
    ("layer_norm_2axes_no_bias", "y = LayerNormalization <axis = 1> (x, g)", {"x": [2, 4, 6]}, {"g": _w(4, 6)}),
    ("layer_norm_decomposed", ("m = ReduceMean <axes = [-1]> (x)\nd = Sub (x, m)\np = Pow (d, two)\nv = ReduceMean <axes = [-1]> (p)\n"
                               "e = Add (v, eps)\nr = Sqrt (e)\nn = Div (d, r)\ny = Mul (n, g)"), {"x": [1, 4, 16]},
     {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32), "g": _w(16)}),
    ("gather", "y = Gather <axis = 1> (x, i)", {"x": [2, 6]}, {"i": np.array([4, 0, -1], np.int64)}),
    ("shape_arithmetic", CONV + "s = Shape (c)\nn = Gather (s, zero)\nnn = Unsqueeze (n, zero)\nt = Concat <axis = 0> (nn, m1)\ny = Reshape (c, t)", None,
     {**CW, "zero": np.array(0, np.int64), "m1": np.array([-1], np.int64)}),
]


@pytest.mark.parametrize(("body", "inputs", "inits"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_op_matches_onnxruntime(body: str, inputs: dict[str, list[int]] | None, inits: dict[str, np.ndarray]) -> None:
    m = model(body, inputs, **inits)
    result = convert(m)
    comparison = compare(m, result.tflite_bytes, result.inputs, samples=2)
    assert comparison.max_rel_error <= TOLERANCE, (result.report.op_counts, comparison.errors)
    assert [s.name for s in result.inputs] == [i.name for i in m.graph.input]
    assert [s.name for s in result.outputs] == ["y"]


def test_relu_is_fused_into_the_conv() -> None:
    result = convert(model(CONV + "y = Relu (c)", **CW))
    assert result.report.op_counts.get("RELU") is None
    assert result.report.op_counts["CONV_2D"] == 1


def test_batchnorm_before_conv_fold_leaves_no_mul() -> None:
    m = model("c = Conv (x, cw)\ny = BatchNormalization (c, g, b, m, v)", None,
              cw=_w(4, 3, 3, 3), g=_w(4), b=_w(4), m=_w(4), v=_w(4, positive=True))
    result = convert(m)
    assert set(result.report.op_counts) <= {"CONV_2D", "TRANSPOSE", "RESHAPE"}
    assert any("BatchNormalization" in n for n in result.report.notes)


def test_a_chain_of_convs_transposes_only_at_the_ends() -> None:
    body = CONV + "r = Relu (c)\nd = Conv <group = 4, pads = [1, 1, 1, 1]> (r, dw)\ne = Add (d, r)\n" \
                  "p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (e)\ny = Conv (p, pw)"
    result = convert(model(body, cw=CW["cw"], dw=_w(4, 1, 3, 3), pw=_w(6, 4, 1, 1)))
    assert result.report.transposes == 2  # the NCHW input, the NCHW output


@pytest.mark.parametrize(
    ("op", "inputs", "attrs"),
    [("NonMaxSuppression", ["x", "s"], {}), ("LSTM", ["x", "w", "r"], {"hidden_size": 2})],
    ids=["NonMaxSuppression", "LSTM"],
)
def test_an_unsupported_op_names_node_and_op(op: str, inputs: list[str], attrs: dict[str, int]) -> None:
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Relu", ["x0"], ["x"], name="relu"), h.make_node(op, inputs, ["y"], name="the_node", **attrs)],
        "g",
        [h.make_tensor_value_info("x0", onnx.TensorProto.FLOAT, [1, 4, 4])],
        [h.make_tensor_value_info("y", onnx.TensorProto.UNDEFINED, None)],
        [numpy_helper.from_array(_w(1, 1, 4), "s"), numpy_helper.from_array(_w(1, 8, 4), "w"),
         numpy_helper.from_array(_w(1, 8, 2), "r")],
    )
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOp) as info:
        convert(m)
    assert isinstance(info.value, CompileError)
    assert (info.value.op_type, info.value.node) == (op, "the_node")
    assert f"node 'the_node' ({op})" in str(info.value)


def test_an_unsupported_attribute_is_named() -> None:
    m = model(CONV + "y = Resize <mode = \"cubic\"> (c, , s)", s=np.array([1, 1, 2, 2], np.float32), **CW)
    with pytest.raises(UnsupportedOp, match="attribute 'mode'") as info:
        convert(m)
    assert info.value.attribute == "mode" and info.value.op_type == "Resize"


def test_input_shapes_fix_a_dynamic_dimension() -> None:
    text = '<ir_version: 8, opset_import: ["" : 17]>\ntest (float[N, 3, H, W] x) => (float y) {\ny = Relu (x)\n}'
    m = onnx.parser.parse_model(text)
    m.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, "H", "W"]))
    result = convert(m, input_shapes={"x": [1, 3, 5, 6]})
    assert result.inputs[0].shape == [1, 3, 5, 6] and result.outputs[0].shape == [1, 3, 5, 6]
    with pytest.raises(CompileError, match="H"):
        convert(m)


def test_opset_11_softmax_over_several_axes_is_refused() -> None:
    m = model(CONV + "y = Softmax <axis = 1> (c)", opset=11, **CW)
    with pytest.raises(UnsupportedOp, match="attribute 'axis'"):
        convert(m)


def test_the_file_is_a_tflite_flatbuffer_with_a_serving_signature() -> None:
    from ai_edge_litert.interpreter import Interpreter

    result = convert(model(CONV + "y = Relu (c)", **CW))
    assert result.tflite_bytes[4:8] == b"TFL3"
    interpreter = Interpreter(model_content=result.tflite_bytes)
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["x"], "outputs": ["y"]}}


def test_the_erf_gelu_becomes_one_gelu_op() -> None:
    body = "d = Div (x, r2)\ne = Erf (d)\na = Add (e, one)\nm = Mul (x, a)\ny = Mul (m, half)"
    m = model(body, {"x": [2, 8]}, r2=np.array(np.sqrt(2), np.float32), one=np.array(1.0, np.float32), half=np.array(0.5, np.float32))
    assert convert(m).report.op_counts == {"GELU": 1}


def test_opset_20_gelu() -> None:
    m = model(CONV + "y = Gelu <approximate = \"tanh\"> (c)", opset=20, **CW)
    result = convert(m)
    assert compare(m, result.tflite_bytes, result.inputs, samples=2).max_rel_error <= TOLERANCE


def test_a_1d_conv_runs_as_a_2d_conv_and_says_so() -> None:
    result = convert(model("y = Conv (x, w)", {"x": [1, 3, 16]}, w=_w(4, 3, 3)))
    assert result.report.op_counts["CONV_2D"] == 1
    assert any("1-D Conv" in note for note in result.report.notes)


def test_a_grouped_3d_conv_and_a_3d_pool_are_clear_errors() -> None:
    grouped = model("y = Conv <group = 2> (x, w)", {"x": [1, 2, 4, 4, 4]}, w=_w(2, 1, 3, 3, 3))
    with pytest.raises(UnsupportedOp, match=r"node 'Conv_0' \(Conv\), attribute 'group'.*CONV_3D has no groups"):
        convert(grouped)
    with pytest.raises(UnsupportedOp, match=r"\(MaxPool\), attribute 'kernel_shape'.*rank-5 input"):
        convert(model("y = MaxPool <kernel_shape = [2, 2, 2]> (x)", {"x": [1, 2, 4, 4, 4]}))
