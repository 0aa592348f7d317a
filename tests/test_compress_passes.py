"""The compression passes on tiny graphs written inside the tests: each pass keeps its contract."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from edgefleet.compiler import calibration, entropy, inference, stats
from edgefleet.compiler.passes import (
    PASSES,
    ChannelPrune,
    ChannelPruneConfig,
    Cluster,
    ClusterConfig,
    LowRank,
    LowRankConfig,
    PassData,
    Prune,
    PruneConfig,
    build_pass,
)
from edgefleet.compiler.passes.cluster import kmeans_1d

RNG = np.random.default_rng(0)


def build(text: str, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A model from ONNX text, with its weights as initializers."""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items())
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def dense(kind: str, hidden: int = 32) -> onnx.ModelProto:
    """x[1, 16] -> dense(hidden) -> Relu -> dense(4), as MatMul+Add or Gemm (transB 0 or 1)."""
    w0, w1 = RNG.standard_normal((16, hidden)) / 4, RNG.standard_normal((hidden, 4)) / np.sqrt(hidden)
    b0, b1 = RNG.standard_normal(hidden) * 0.1, RNG.standard_normal(4) * 0.1
    if kind == "matmul":
        body = "m0 = MatMul(x, w0)\n z0 = Add(m0, b0)\n h = Relu(z0)\n m1 = MatMul(h, w1)\n y = Add(m1, b1)"
    elif kind == "gemm":
        body = "z0 = Gemm(x, w0, b0)\n h = Relu(z0)\n y = Gemm(h, w1, b1)"
    else:  # gemm with transposed weights, as PyTorch exports Linear
        body = "z0 = Gemm<transB=1>(x, w0, b0)\n h = Relu(z0)\n y = Gemm<transB=1>(h, w1, b1)"
        w0, w1 = w0.T, w1.T
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 16] x) => (float[1, 4] y) {{
        {body}
    }}"""
    return build(text, {"w0": w0, "b0": b0, "w1": w1, "b1": b1})


def cnn(residual: bool = False) -> onnx.ModelProto:
    """x[1, 3, 8, 8] -> Conv 3x3 (8) -> BN -> Relu -> MaxPool -> Conv 3x3 (8) -> Relu -> Flatten -> Gemm (5).

    With ``residual``, the second conv's output is also added to the first block's (a skip connection).
    """
    w = {
        "c1": RNG.standard_normal((8, 3, 3, 3)) / 5, "c1b": RNG.standard_normal(8) * 0.1,
        "s": 1 + 0.1 * RNG.standard_normal(8), "bb": 0.1 * RNG.standard_normal(8),
        "mu": 0.1 * RNG.standard_normal(8), "var": RNG.uniform(0.5, 1.5, 8),
        "c2": RNG.standard_normal((8, 8, 3, 3)) / 8, "c2b": RNG.standard_normal(8) * 0.1,
        "fc": RNG.standard_normal((5, 128)) / 11, "fcb": RNG.standard_normal(5) * 0.1,
    }
    tail = "s2 = Add(r2, p1)\n f = Flatten(s2)" if residual else "f = Flatten(r2)"
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3, 8, 8] x) => (float[1, 5] y) {{
        a1 = Conv<kernel_shape=[3, 3], pads=[1, 1, 1, 1]>(x, c1, c1b)
        n1 = BatchNormalization(a1, s, bb, mu, var)
        r1 = Relu(n1)
        p1 = MaxPool<kernel_shape=[2, 2], strides=[2, 2]>(r1)
        a2 = Conv<kernel_shape=[3, 3], pads=[1, 1, 1, 1]>(p1, c2, c2b)
        r2 = Relu(a2)
        {tail}
        y = Gemm<transB=1>(f, fc, fcb)
    }}"""
    return build(text, w)


def data_for(model: onnx.ModelProto, n: int = 48, seed: int = 1) -> PassData:
    vi = model.graph.input[0]
    shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    make = lambda: calibration.Dataset(
        arrays={vi.name: rng.standard_normal((n, *shape)).astype(np.float32)}, source="test")
    return PassData(evaluation=make(), calibration=make())


def weight_arrays(model: onnx.ModelProto, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in names}


# --- unstructured and N:M pruning ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["matmul", "gemm", "gemm-t"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_per_layer_pruning_reaches_the_sparsity_in_every_layer_and_leaves_the_input_alone(kind: str, sparsity: float) -> None:
    model = dense(kind)
    before = model.SerializeToString()
    result = Prune(PruneConfig(sparsity=sparsity))(model, data_for(model))
    assert model.SerializeToString() == before
    for name, w in weight_arrays(result.model, ("w0", "w1")).items():
        assert np.mean(w == 0) == pytest.approx(sparsity, abs=1 / w.size), name
    assert result.report.params == stats.count_params(model)[0]
    assert result.report.nonzero_params < result.report.params


def test_global_pruning_reaches_the_sparsity_over_all_layers_together() -> None:
    model = dense("gemm")
    result = Prune(PruneConfig(sparsity=0.6, scope="global", bias_correction=False))(model, data_for(model))
    ws = weight_arrays(result.model, ("w0", "w1")).values()
    zeros = sum(int(np.sum(w == 0)) for w in ws)
    assert zeros / sum(w.size for w in ws) == pytest.approx(0.6, abs=0.01)


def test_bias_correction_moves_the_mean_output_back() -> None:
    model = dense("matmul")
    data = data_for(model, n=200)
    reference = inference.run_model(model, list(data.evaluation.feeds()))[0]
    shifts = {}
    for correct in (False, True):
        out = Prune(PruneConfig(sparsity=0.7, bias_correction=correct))(model, data)
        shifts[correct] = np.abs((inference.run_model(out.model, list(data.evaluation.feeds()))[0] - reference).mean(0)).mean()
        assert any("bias correction" in n for n in out.report.notes) == correct
    assert shifts[True] < shifts[False]


def test_bias_correction_without_data_is_skipped_and_said() -> None:
    model = dense("gemm")
    data = data_for(model)
    result = Prune(PruneConfig())(model, PassData(evaluation=data.evaluation))
    assert "bias correction skipped: no calibration data" in result.report.notes


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 8)])
def test_n_m_pruning_keeps_n_of_every_m_weights_along_the_reduced_axis(n: int, m: int) -> None:
    model = dense("gemm-t")  # weights [out, in]: groups run along the rows
    result = Prune(PruneConfig(n=n, m=m))(model, data_for(model))
    for w in weight_arrays(result.model, ("w0", "w1")).values():
        groups = (w != 0).reshape(w.shape[0], -1, m).sum(-1)
        assert groups.max() <= n


def test_n_m_pruning_skips_and_logs_a_layer_whose_reduced_size_does_not_divide() -> None:
    model = cnn()  # conv1 reduces over 3 x 3 x 3 = 27 values
    result = Prune(PruneConfig(n=2, m=4))(model, data_for(model))
    assert any("reduced size 27 is not a multiple of 4" in note for note in result.report.notes)
    c2 = weight_arrays(result.model, ("c2",))["c2"]
    assert ((c2 != 0).reshape(8, -1, 4).sum(-1) <= 2).all()


def test_prune_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="sparsity must be in"):
        PruneConfig(sparsity=1.5)
    with pytest.raises(ValueError, match="0 < n < m"):
        PruneConfig(n=4, m=2)


# --- structured channel pruning ------------------------------------------------------------------

@pytest.mark.parametrize("criterion", ["l1", "l2", "activation", "variance"])
def test_channel_pruning_removes_channels_cuts_macs_and_the_rewired_model_runs(criterion: str) -> None:
    model = cnn()
    data = data_for(model)
    result = ChannelPrune(ChannelPruneConfig(ratio=0.5, criterion=criterion))(model, data)
    w = weight_arrays(result.model, ("c1", "c1b", "s", "c2", "fc"))
    assert w["c1"].shape == (4, 3, 3, 3) and w["c1b"].shape == (4,) and w["s"].shape == (4,)
    assert w["c2"].shape == (4, 4, 3, 3)
    assert w["fc"].shape == (5, 64)  # 4 channels x 4 x 4 positions after Flatten
    assert stats.count_macs(result.model) < stats.count_macs(model) / 2
    out = inference.run_model(result.model, list(data.evaluation.feeds()))[0]
    assert out.shape == (len(data.evaluation), 1, 5)
    assert result.report.fidelity.cosine > 0


@pytest.mark.parametrize("kind", ["matmul", "gemm", "gemm-t"])
def test_channel_pruning_of_a_dense_layer_rewires_the_next_layers_input_features(kind: str) -> None:
    model = dense(kind, hidden=32)
    result = ChannelPrune(ChannelPruneConfig(ratio=0.25))(model, data_for(model))
    assert result.report.params == stats.count_params(model)[0] - 8 * (16 + 1 + 4)
    assert any(n.startswith("skipped") for n in result.report.notes)  # the last layer feeds the output


def test_channels_feeding_a_residual_add_are_skipped_and_logged() -> None:
    model = cnn(residual=True)
    result = ChannelPrune(ChannelPruneConfig(ratio=0.5))(model, data_for(model))
    notes = " ".join(result.report.notes)
    assert "fan-out" in notes and "Add" in notes
    assert not result.report.modified  # both convs feed the Add, directly or through the pool
    assert stats.count_macs(result.model) == stats.count_macs(model)


def test_compensation_for_removed_channels_helps_a_dense_layer() -> None:
    model = dense("gemm", hidden=64)
    data = data_for(model, n=200)
    sqnr = {c: ChannelPrune(ChannelPruneConfig(ratio=0.5, compensate=c))(model, data).report.fidelity.sqnr_db
            for c in (False, True)}
    assert sqnr[True] > sqnr[False]


# --- low-rank factorisation ----------------------------------------------------------------------

def low_rank_dense(kind: str) -> onnx.ModelProto:
    """x[1, 64] -> dense 64x64 of rank ~8 (+ a little noise) -> y."""
    w = RNG.standard_normal((64, 8)) @ RNG.standard_normal((8, 64)) / 8 + 0.001 * RNG.standard_normal((64, 64))
    if kind == "conv1x1":
        text = """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 64, 4, 4] x) => (float[1, 64, 4, 4] y) { y = Conv<kernel_shape=[1, 1]>(x, w, b) }"""
        return build(text, {"w": w.reshape(64, 64, 1, 1), "b": RNG.standard_normal(64)})
    op = {"matmul": "MatMul(x, w)", "gemm": "Gemm(x, w, b)", "gemm-t": "Gemm<transB=1>(x, w, b)"}[kind]
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 64] x) => (float[1, 64] y) {{ y = {op} }}"""
    return build(text, {"w": w, **({"b": RNG.standard_normal(64)} if kind != "matmul" else {})})


@pytest.mark.parametrize("kind", ["matmul", "gemm", "gemm-t", "conv1x1"])
def test_lowrank_cuts_params_and_macs_and_approximates_the_outputs(kind: str) -> None:
    model = low_rank_dense(kind)
    result = LowRank(LowRankConfig(energy=0.999))(model, data_for(model))
    assert result.report.modified
    assert result.report.params < 0.5 * stats.count_params(model)[0]
    assert stats.count_macs(result.model) < 0.5 * stats.count_macs(model)
    assert result.report.fidelity.sqnr_db is not None and result.report.fidelity.sqnr_db > 30


def test_lowrank_respects_a_parameter_budget_and_skips_layers_it_would_not_shrink() -> None:
    model = low_rank_dense("matmul")
    budget = LowRank(LowRankConfig(energy=1.0, param_budget=0.1))(model, data_for(model))
    assert budget.report.params <= 0.1 * 64 * 64
    full = LowRank(LowRankConfig(energy=1.0))(model, data_for(model))
    assert not full.report.modified and any("would not reduce" in n for n in full.report.notes)


# --- clustering ----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 4, 16])
@pytest.mark.parametrize("model", [dense("matmul"), cnn()], ids=["dense", "cnn"])
def test_clustering_leaves_at_most_k_values_per_layer(k: int, model: onnx.ModelProto) -> None:
    result = Cluster(ClusterConfig(clusters=k))(model, data_for(model))
    for layer_weight in ("w0", "w1", "c1", "c2", "fc"):
        w = weight_arrays(result.model, (layer_weight,)).get(layer_weight)
        if w is not None:
            assert len(np.unique(w)) <= k
    assert any("codebooks" in n for n in result.report.notes)


def test_clustering_keeps_pruned_zeros_as_zeros() -> None:
    model = dense("gemm")
    pruned = Prune(PruneConfig(sparsity=0.5, bias_correction=False))(model, data_for(model)).model
    clustered = Cluster(ClusterConfig(clusters=8))(pruned, data_for(model)).model
    for name in ("w0", "w1"):
        before, after = weight_arrays(pruned, (name,))[name], weight_arrays(clustered, (name,))[name]
        assert np.array_equal(before == 0, after == 0) and len(np.unique(after)) <= 8


def test_one_dimensional_kmeans_finds_well_separated_clusters() -> None:
    values = np.concatenate([RNG.normal(c, 0.01, 500) for c in (-1.0, 0.2, 3.0)])
    assert np.allclose(kmeans_1d(values, 3), [-1.0, 0.2, 3.0], atol=0.01)


# --- entropy coding ------------------------------------------------------------------------------

def test_entropy_coding_a_clustered_model_beats_its_raw_size() -> None:
    model = dense("matmul", hidden=256)
    clustered = Cluster(ClusterConfig(clusters=16))(model, data_for(model)).model
    report = entropy.measure(clustered)
    assert report.transfer_bytes < report.raw_bytes
    assert report.entropy_bytes <= report.huffman_bytes
    assert report.entropy_bits_per_weight <= 4.0 + 1e-6
    raw = clustered.SerializeToString()
    assert entropy.decompress(entropy.compress(raw)) == raw


def test_huffman_code_lengths_form_a_complete_prefix_code() -> None:
    counts = np.array([50, 20, 15, 10, 4, 1])
    lengths = entropy.huffman_lengths(counts)
    assert np.sum(2.0 ** -lengths) == pytest.approx(1.0)  # Kraft equality
    assert entropy.entropy_bits(counts) <= (counts * lengths).sum() < entropy.entropy_bits(counts) + counts.sum()


# --- registry ------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [PruneConfig(sparsity=0.7, scope="global"), PruneConfig(n=2, m=4),
                                    ChannelPruneConfig(ratio=0.3, layers=("conv1",)), LowRankConfig(param_budget=0.5),
                                    ClusterConfig(clusters=8)])
def test_compression_configs_round_trip_through_their_manifest_dict(config: object) -> None:
    rebuilt = build_pass(config.to_dict())  # type: ignore[attr-defined]
    assert rebuilt.config == config
    assert PASSES[rebuilt.name] is type(rebuilt)


# --- additions: depthwise pass-through, channel multiples, k x k low-rank, data-aware low-rank ----

def separable(channels: int = 16) -> onnx.ModelProto:
    """x[1, 4, 6, 6] -> Conv 1x1 (C) -> Relu -> depthwise 3x3 (C) -> Relu -> Conv 1x1 (6): a MobileNet block."""
    c = channels
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 6, 6] x) => (float[1, 6, 6, 6] y) {{
        a = Conv<kernel_shape=[1, 1]>(x, pw1, pw1b)
        r = Relu(a)
        d = Conv<kernel_shape=[3, 3], pads=[1, 1, 1, 1], group={c}>(r, dw, dwb)
        s = Relu(d)
        y = Conv<kernel_shape=[1, 1]>(s, pw2, pw2b)
    }}"""
    return build(text, {"pw1": RNG.standard_normal((c, 4, 1, 1)), "pw1b": RNG.standard_normal(c) * 0.1,
                        "dw": RNG.standard_normal((c, 1, 3, 3)) / 3, "dwb": RNG.standard_normal(c) * 0.1,
                        "pw2": RNG.standard_normal((6, c, 1, 1)) / 4, "pw2b": RNG.standard_normal(6) * 0.1})


@pytest.mark.parametrize("multiple, kept", [(1, 10), (4, 12)])
def test_channel_pruning_passes_through_a_depthwise_conv_and_rounds_to_a_multiple(multiple: int, kept: int) -> None:
    model = separable(16)
    data = data_for(model)
    result = ChannelPrune(ChannelPruneConfig(ratio=0.4, criterion="variance", multiple=multiple))(model, data)
    w = weight_arrays(result.model, ("pw1", "pw1b", "dw", "dwb", "pw2"))
    assert w["pw1"].shape == (kept, 4, 1, 1) and w["pw1b"].shape == (kept,)
    assert w["dw"].shape == (kept, 1, 3, 3) and w["dwb"].shape == (kept,)
    assert w["pw2"].shape == (6, kept, 1, 1)
    depthwise = next(n for n in result.model.graph.node if list(n.input[1:2]) == ["dw"])
    assert onnx.helper.get_attribute_value(next(a for a in depthwise.attribute if a.name == "group")) == kept
    assert stats.count_macs(result.model) < stats.count_macs(model)
    assert result.report.fidelity.cosine > 0.5  # the rewired model runs and still follows the original


def test_lowrank_splits_a_k_by_k_conv_into_fewer_filters_and_a_1x1() -> None:
    w = (RNG.standard_normal((32, 4)) @ RNG.standard_normal((4, 16 * 9))).reshape(32, 16, 3, 3) / 12
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 16, 8, 8] x) => (float[1, 32, 4, 4] y) { y = Conv<kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]>(x, w, b) }"""
    model = build(text, {"w": w, "b": RNG.standard_normal(32)})
    result = LowRank(LowRankConfig(energy=0.999))(model, data_for(model))
    first, second = result.model.graph.node
    a, b = weight_arrays(result.model, (first.input[1],))[first.input[1]], weight_arrays(result.model, (second.input[1],))[second.input[1]]
    assert a.shape == (4, 16, 3, 3) and b.shape == (32, 4, 1, 1) and list(second.input[2:]) == ["b"]
    assert stats.count_macs(result.model) < 0.2 * stats.count_macs(model)
    assert result.report.fidelity.sqnr_db is not None and result.report.fidelity.sqnr_db > 40


def test_data_aware_lowrank_fits_the_outputs_on_data_far_better_than_plain_svd() -> None:
    # A full-rank layer whose inputs live in 6 of their 64 directions (plus an offset): the weights are
    # not low-rank, what the layer computes on such inputs is.
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 64] x) => (float[1, 48] y) { y = Gemm(x, w, b) }"""
    model = build(text, {"w": RNG.standard_normal((64, 48)), "b": RNG.standard_normal(48)})
    basis, offset = RNG.standard_normal((6, 64)), RNG.standard_normal(64)

    def samples(n: int) -> calibration.Dataset:
        x = RNG.standard_normal((n, 1, 6)) @ basis + offset
        return calibration.Dataset(arrays={"x": x.astype(np.float32)}, source="test")

    data = PassData(evaluation=samples(64), calibration=samples(256))
    sqnr = {}
    for aware in (False, True):
        result = LowRank(LowRankConfig(param_budget=0.3, energy=1.0, data_aware=aware, bias_correction=aware))(model, data)
        assert result.report.params <= 0.3 * 64 * 48 + 48
        sqnr[aware] = result.report.fidelity.sqnr_db
    assert sqnr[True] is not None and sqnr[False] is not None
    assert sqnr[True] > 30 and sqnr[True] > sqnr[False] + 20


def test_a_small_mobilenet_from_the_zoo_recipe_trains_exports_and_slims(tmp_path: object) -> None:
    pytest.importorskip("torch")
    from edgefleet.compiler import model_zoo
    from edgefleet.compiler.onnx_model import load_model

    zoo = model_zoo.digits_mobilenet(tmp_path, model_zoo.MobileNetRecipe(size=8, stem=8, blocks=((2, 16),), epochs=2))  # type: ignore[arg-type]
    assert zoo.accuracy > 0.15  # better than chance after two epochs: it trained; the export is checked inside
    loaded = load_model(zoo.onnx_path)
    ops = [n.op_type for n in loaded.model.graph.node]
    assert ops == ["Conv", "Relu", "Conv", "Relu", "Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm", "Softmax"]
    data = PassData(evaluation=calibration.load_dataset(zoo.validation_path, loaded.inputs).take(range(100)),
                    calibration=calibration.load_dataset(zoo.calibration_path, loaded.inputs))
    assert data.calibration is not None and data.calibration.labels is not None  # fine-tuning can train on it
    result = ChannelPrune(ChannelPruneConfig(ratio=0.5, criterion="variance", multiple=4))(loaded.model, data)
    # The stem loses 4 of 8 channels through the depthwise conv; the pointwise conv 8 of 16 before the pool.
    assert stats.count_macs(result.model) < 0.5 * stats.count_macs(loaded.model)
    assert result.report.fidelity.accuracy is not None
