"""The compiler's building blocks on tiny graphs written inside the tests: loading, data, fidelity, passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler import calibration, fidelity, inference, model_zoo, stats
from edgefleet.compiler.errors import CalibrationError, ModelError, PassError
from edgefleet.compiler.onnx_model import load_model, prepare
from edgefleet.compiler.passes import (
    PASSES,
    DynamicInt8,
    DynamicInt8Config,
    KeepFp32,
    PassData,
    StaticInt8,
    StaticInt8Config,
    build_pass,
)


def mlp(batch: int | str = 1, *, gemm: bool = False, seed: int = 0, hidden: int = 32) -> onnx.ModelProto:
    """x[batch, 16] -> MatMul/Add -> Relu -> MatMul/Add -> y[batch, 4] (or Gemm when ``gemm``)."""
    rng = np.random.default_rng(seed)
    # Weights scaled by 1/sqrt(fan-in), as trained networks roughly are, so activations stay O(1).
    w0, b0 = (rng.standard_normal((16, hidden)) / 4).astype(np.float32), (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w1, b1 = (rng.standard_normal((hidden, 4)) / np.sqrt(hidden)).astype(np.float32), (rng.standard_normal(4) * 0.1).astype(np.float32)
    if gemm:
        nodes = [
            helper.make_node("Gemm", ["x", "w0", "b0"], ["z0"]),
            helper.make_node("Relu", ["z0"], ["h"]),
            helper.make_node("Gemm", ["h", "w1", "b1"], ["y"]),
        ]
    else:
        nodes = [
            helper.make_node("MatMul", ["x", "w0"], ["m0"]),
            helper.make_node("Add", ["m0", "b0"], ["z0"]),
            helper.make_node("Relu", ["z0"], ["h"]),
            helper.make_node("MatMul", ["h", "w1"], ["m1"]),
            helper.make_node("Add", ["m1", "b1"], ["y"]),
        ]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w0, "w0"), (b0, "b0"), (w1, "w1"), (b1, "b1"))]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


SPEC = TensorSpec(name="x", shape=[1, 16], dtype="float32")


def samples(n: int, seed: int = 1) -> calibration.Dataset:
    x = np.random.default_rng(seed).standard_normal((n, 1, 16)).astype(np.float32)
    return calibration.Dataset(arrays={"x": x}, source="test")


# --- loading -------------------------------------------------------------------------------------


def test_a_symbolic_batch_is_fixed_to_one_and_the_report_says_so() -> None:
    loaded = prepare(mlp(batch="N"))
    assert [s.shape for s in loaded.inputs] == [[1, 16]]
    assert [s.shape for s in loaded.outputs] == [[1, 4]]
    assert loaded.notes == ("fixed the batch dimension ('N') of input 'x' to 1",)
    inference.run_model(loaded.model, [{"x": np.zeros((1, 16), np.float32)}])


def test_an_output_left_dynamic_gets_its_inferred_shape() -> None:
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[batch, 3] x) => (float[?, ?] y) { y = Relu(x) }"""
    )
    loaded = prepare(model)
    assert loaded.outputs[0].shape == [1, 3]


def test_a_dynamic_dimension_other_than_the_batch_is_an_error_saying_how_to_re_export() -> None:
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, seq] x) => (float[1, seq] y) { y = Relu(x) }"""
    )
    with pytest.raises(ModelError, match=r"input 'x' has 'seq' at axis 1; re-export it with static shapes"):
        prepare(model)


def test_missing_corrupt_and_invalid_models_are_named_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        load_model(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(corrupt)
    broken = mlp()
    broken.graph.node[0].input[1] = "no_such_weight"
    onnx.save(broken, tmp_path / "broken.onnx")
    with pytest.raises(ModelError, match="the ONNX checker rejects the model"):
        load_model(tmp_path / "broken.onnx")


# --- data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [(10, 16), (10, 1, 16)])
def test_samples_with_or_without_the_unit_batch_axis_load_as_model_shaped_feeds(tmp_path: Path, layout: tuple[int, ...]) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones(layout, np.float64), labels=np.arange(10))
    data = calibration.load_dataset(tmp_path / "d.npz", [SPEC])
    assert len(data) == 10 and data.labels is not None
    feed = next(data.feeds())
    assert feed["x"].shape == (1, 16) and feed["x"].dtype == np.float32  # float64 narrowed to the input's dtype


def test_a_single_array_feeds_a_single_input_model_whatever_its_key(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((3, 16), np.float32))
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 16), np.float32))
    assert len(calibration.load_dataset(tmp_path / "d.npy", [SPEC])) == 3
    assert len(calibration.load_dataset(tmp_path / "d.npz", [SPEC])) == 3


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 15), np.float32)}, r"array 'x' has shape \[3, 15\] but input 'x' is \[1, 16\]"),
        ({"a": np.zeros((3, 16)), "b": np.zeros((3, 16))}, r"the model's inputs are \['x'\] but the file has arrays \['a', 'b'\]"),
        ({"x": np.zeros((3, 16), np.int64)}, r"dtype int64 but input 'x' takes float32"),
        ({"x": np.zeros((3, 16)), "labels": np.zeros(2, np.int64)}, r"'labels' must be 3 integers"),
    ],
)
def test_malformed_data_says_what_does_not_match(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(CalibrationError, match=message):
        calibration.load_dataset(tmp_path / "d.npz", [SPEC])


def test_split_is_deterministic_and_holds_out_disjoint_samples() -> None:
    data = samples(40)
    calib, held = calibration.split(data)
    assert (len(calib), len(held)) == (30, 10)
    rows = {r.tobytes() for r in calib.arrays["x"]}
    assert not rows & {r.tobytes() for r in held.arrays["x"]}
    again, _ = calibration.split(data)
    assert np.array_equal(again.arrays["x"], calib.arrays["x"])


def test_random_inputs_are_flagged_synthetic() -> None:
    data = calibration.synthetic([SPEC, TensorSpec(name="ids", shape=[1, 5], dtype="int64")], count=8)
    assert data.synthetic and len(data) == 8
    assert data.arrays["ids"].dtype == np.int64 and data.arrays["ids"].max() < 10


# --- fidelity ------------------------------------------------------------------------------------


def test_identical_outputs_are_exact_and_noise_gives_the_expected_sqnr() -> None:
    ref = np.ones((5, 1, 8), np.float32)
    exact = fidelity.compare(["y"], [ref], [ref.copy()])
    assert exact.sqnr_db is None and exact.cosine == 1.0 and exact.max_abs_error == 0.0
    noisy = fidelity.compare(["y"], [ref], [ref + 0.1])
    assert noisy.sqnr_db == pytest.approx(20.0)  # 10*log10(1 / 0.1**2)
    assert noisy.max_abs_error == pytest.approx(0.1)


def test_top1_agreement_applies_to_class_scores_only() -> None:
    ref = np.array([[[0.1, 0.9]], [[0.8, 0.2]], [[0.3, 0.7]], [[0.6, 0.4]]], np.float32)  # [N, 1, C]
    cand = ref.copy()
    cand[0] = [[0.9, 0.1]]
    f = fidelity.compare(["p"], [ref], [cand], labels=np.array([1, 0, 1, 1]))
    assert f.top1_agreement == 0.75 and f.is_classifier
    assert (f.reference_accuracy, f.accuracy) == (0.75, 0.5)
    feature_map = np.ones((2, 1, 3, 4, 4), np.float32)
    assert fidelity.compare(["fm"], [feature_map], [feature_map]).top1_agreement is None


# --- passes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pass_", [StaticInt8(), DynamicInt8()], ids=lambda p: p.name)
def test_int8_passes_shrink_the_weights_keep_the_parameter_count_and_leave_the_input_alone(pass_) -> None:  # type: ignore[no-untyped-def]
    model = mlp(hidden=256)  # enough weights that int8 storage, not quantization metadata, dominates the size
    before = model.SerializeToString()
    data = PassData(evaluation=samples(32, seed=2), calibration=samples(64))
    result = pass_(model, data)
    r = result.report
    assert model.SerializeToString() == before, "a pass must not change its input"
    assert r.modified
    weight_types = {i.data_type for i in result.model.graph.initializer if i.name.startswith("w")}
    assert TensorProto.INT8 in weight_types
    assert r.params == stats.count_params(model)[0] == 16 * 256 + 256 + 256 * 4 + 4
    assert r.size_bytes < r.input_size_bytes / 2
    # Loose on purpose: on x86 without VNNI onnxruntime's int8 kernels saturate (about 21 dB here,
    # 35 dB with the same model's exact QDQ arithmetic); see compiler/packaging.py.
    assert r.fidelity.sqnr_db is not None and r.fidelity.sqnr_db > 15
    assert r.fidelity.cosine > 0.99 and r.fidelity.samples == 32
    assert r.config == pass_.config.to_dict()


def test_static_int8_is_per_channel_qdq_by_default() -> None:
    result = StaticInt8()(mlp(), PassData(evaluation=samples(8), calibration=samples(32)))
    ops = {n.op_type for n in result.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    scales = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert scales["w0_scale"].shape == (32,)  # one scale per output channel
    assert "calibrated on 32 samples from test" in result.report.notes


def test_static_int8_folds_batchnorm_into_the_conv_so_no_float_island_is_left() -> None:
    model = model_zoo.mobilenetv2_block()
    images = np.random.default_rng(0).standard_normal((32, 1, 3, 32, 32)).astype(np.float32)
    data = calibration.Dataset(arrays={"input": images}, source="test")
    result = StaticInt8()(model, PassData(evaluation=data, calibration=data))
    graph = result.model.graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    # With the BatchNormalization folded, every Conv writes straight into a QuantizeLinear, which
    # onnxruntime fuses with it into one int8 kernel; an unfolded one left a float island there.
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        assert {n.op_type for n in graph.node if conv.output[0] in n.input} == {"QuantizeLinear"}, conv.name
    assert "folded 7 BatchNormalization(s) into the Conv before each, so none runs in float" in result.report.notes
    assert result.report.fidelity.cosine > 0.99


def test_static_int8_needs_real_calibration_data() -> None:
    with pytest.raises(PassError, match="needs calibration samples"):
        StaticInt8()(mlp(), PassData(evaluation=samples(4)))
    random = calibration.synthetic([SPEC], count=4)
    with pytest.raises(PassError, match="refuses random calibration samples"):
        StaticInt8()(mlp(), PassData(evaluation=samples(4), calibration=random))


def test_dynamic_int8_reports_that_it_changed_nothing_when_no_operator_has_weights() -> None:
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 16] x) => (float[1, 16] y) { r = Relu(x)  y = Sigmoid(r) }"""
    )
    data = PassData(evaluation=calibration.Dataset(arrays={"x": np.ones((2, 1, 16), np.float32)}))
    result = DynamicInt8()(model, data)
    assert not result.report.modified
    assert "nothing to quantize" in result.report.notes[0] and "Relu, Sigmoid" in result.report.notes[0]


def test_dynamic_int8_covers_gemm_too() -> None:
    result = DynamicInt8()(mlp(gemm=True), PassData(evaluation=samples(4)))
    assert result.report.modified and "MatMulInteger" in result.report.notes[0]


def test_fp32_is_the_model_itself_with_exact_fidelity() -> None:
    model = mlp()
    result = KeepFp32()(model, PassData(evaluation=samples(4)))
    assert result.model is not model and result.model == model
    assert result.report.fidelity.sqnr_db is None and not result.report.modified


def test_configs_round_trip_through_their_manifest_dict() -> None:
    config = StaticInt8Config(per_channel=False, calibrate_method="percentile", exclude_op_types=("Softmax",))
    rebuilt = build_pass(config.to_dict())
    assert isinstance(rebuilt, StaticInt8) and rebuilt.config == config
    assert {"fp32", "int8-static", "int8-dynamic"} <= set(PASSES)
    with pytest.raises(ValueError, match="unknown compression scheme 'int4'"):
        build_pass({"scheme": "int4"})
    with pytest.raises(ValueError, match=r"unknown settings \['bits'\]"):
        build_pass({**DynamicInt8Config().to_dict(), "bits": 4})
    with pytest.raises(ValueError, match="calibrate_method='median' is not one of"):
        StaticInt8Config(calibrate_method="median")  # type: ignore[arg-type]


# --- stats ---------------------------------------------------------------------------------------


def test_activation_peak_counts_the_largest_live_tensors_and_not_folded_weights() -> None:
    model = mlp(hidden=64)
    # The first Add holds its input and output, both [1, 64] float32, live at once.
    assert stats.activation_peak_bytes(model) == (64 + 64) * 4
    quantized = StaticInt8()(model, PassData(evaluation=samples(4), calibration=samples(16))).model
    # Dequantized weights are constants a runtime folds: they must not count as activations.
    assert stats.activation_peak_bytes(quantized) <= (64 + 64) * 4
