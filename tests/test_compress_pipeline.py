"""Compression pipelines: the spec syntax, failures with context, the CLI, and end-to-end results on the digits models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgefleet.compiler import calibration, model_zoo, stats
from edgefleet.compiler.compress import PipelineError, parse_pipeline, run_pipeline
from edgefleet.compiler.entropy import EntropyConfig
from edgefleet.compiler.onnx_model import load_model
from edgefleet.compiler.passes import (
    ChannelPruneConfig,
    ClusterConfig,
    LowRankConfig,
    PassData,
    PruneConfig,
    StaticInt8Config,
)
from edgefleet.deploy.cli import main

# --- the spec ------------------------------------------------------------------------------------


def test_the_deep_compression_spec_parses_into_configs() -> None:
    configs = parse_pipeline("prune:0.5,cluster:16,int8,entropy")
    assert configs == [PruneConfig(sparsity=0.5), ClusterConfig(clusters=16), StaticInt8Config(per_channel=False),
                       EntropyConfig()]


@pytest.mark.parametrize("spec, expected", [
    ("nm", PruneConfig(n=2, m=4)),
    ("nm:1:8", PruneConfig(n=1, m=8)),
    ("prune:0.8:scope=global:bias_correction=false", PruneConfig(sparsity=0.8, scope="global", bias_correction=False)),
    ("channels:0.375:criterion=variance", ChannelPruneConfig(ratio=0.375, criterion="variance")),
    ("channel-prune:ratio=0.2:layers=conv1+conv2", ChannelPruneConfig(ratio=0.2, layers=("conv1", "conv2"))),
    ("lowrank:0.95:param_budget=0.5", LowRankConfig(energy=0.95, param_budget=0.5)),
    ("int8-static:per_channel=true", StaticInt8Config(per_channel=True)),
])
def test_spec_items_take_positional_values_and_key_value_settings(spec: str, expected: object) -> None:
    assert parse_pipeline(spec) == [expected]


@pytest.mark.parametrize("spec, message", [
    ("", "empty pipeline"),
    ("shrink:2", "unknown pass 'shrink'"),
    ("prune:0.5:0.6", "at most 1 plain values"),
    ("prune:lots", "sparsity='lots' is not a float"),
    ("prune:1.5", "sparsity must be in"),
    ("cluster:16:colour=red", "unknown settings \\['colour'\\]"),
    ("entropy,int8", "must be the last step"),
])
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pipeline(spec)


def test_a_pipeline_file_lists_spec_strings_or_config_dicts(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("- prune:0.5\n- {scheme: cluster, version: 1, clusters: 8}\n- int8\n- entropy\n")
    configs = parse_pipeline(path)
    assert configs[:2] == [PruneConfig(sparsity=0.5), ClusterConfig(clusters=8)] and len(configs) == 4
    # What a report writes is what a pipeline file reads.
    path.write_text(json.dumps([c.to_dict() for c in configs]))
    assert parse_pipeline(path) == configs


# --- running -------------------------------------------------------------------------------------


def _digits(zoo: model_zoo.ZooModel) -> tuple[onnx.ModelProto, PassData]:
    loaded = load_model(zoo.onnx_path)
    return loaded.model, PassData(
        evaluation=calibration.load_dataset(zoo.validation_path, loaded.inputs),
        calibration=calibration.load_dataset(zoo.calibration_path, loaded.inputs),
    )


def test_a_failing_pass_names_itself_the_passes_before_it_and_what_to_try(digits_mlp: model_zoo.ZooModel) -> None:
    model, data = _digits(digits_mlp)
    no_calibration = PassData(evaluation=data.evaluation)
    with pytest.raises(PipelineError) as err:
        run_pipeline(model, parse_pipeline("prune:0.5,cluster:16,int8"), no_calibration)
    assert err.value.pass_name == "int8-static" and err.value.ran == ("prune", "cluster")
    assert "after prune, cluster" in str(err.value) and "try: pass --data" in str(err.value)


@pytest.fixture(scope="module")
def wide_mlp(tmp_path_factory: pytest.TempPathFactory) -> model_zoo.ZooModel:
    return model_zoo.digits_mlp_wide(tmp_path_factory.mktemp("zoo-wide"))


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> model_zoo.ZooModel:
    return model_zoo.digits_cnn(tmp_path_factory.mktemp("zoo-cnn"))


def test_deep_compression_makes_the_wide_mlp_ten_times_smaller_within_a_point(wide_mlp: model_zoo.ZooModel) -> None:
    model, data = _digits(wide_mlp)
    result = run_pipeline(model, parse_pipeline("prune:0.5,cluster:16,int8,entropy"), data)
    assert [s.report.pass_name for s in result.steps] == ["prune", "cluster", "int8-static"]
    assert result.entropy is not None and result.entropy.transfer_bytes < result.final.size_bytes
    assert result.compression_ratio >= 10, result.to_dict()
    f = result.fidelity
    assert f.accuracy is not None and f.reference_accuracy is not None
    assert f.reference_accuracy - f.accuracy <= 0.01
    prune = result.steps[0]
    assert prune.report.nonzero_params < 0.51 * prune.report.params


def test_structured_pruning_cuts_the_digits_cnn_macs_by_more_than_1_8x_within_a_point(digits_cnn: model_zoo.ZooModel) -> None:
    model, data = _digits(digits_cnn)
    result = run_pipeline(model, parse_pipeline("channels:0.375:criterion=variance"), data)
    assert result.original.macs / result.final.macs >= 1.8
    assert result.final.params < result.original.params
    f = result.fidelity
    assert f.accuracy is not None and f.reference_accuracy is not None
    assert f.reference_accuracy - f.accuracy <= 0.01


# --- the command ---------------------------------------------------------------------------------


def test_the_compress_command_prints_a_table_per_pass_and_the_summary(digits_mlp: model_zoo.ZooModel, tmp_path: Path) -> None:
    out = tmp_path / "small.onnx"
    args = ["compress", str(digits_mlp.onnx_path), "--pipeline", "prune:0.5,cluster:16,int8,entropy",
            "--data", str(digits_mlp.validation_path), "--calibration", str(digits_mlp.calibration_path), "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    for text in ("prune", "cluster", "int8-static", "entropy-coded", "compression", "accuracy"):
        assert text in result.output
    assert out.is_file() and stats.count_params(onnx.load(str(out)))[1] < 10_000

    as_json = CliRunner().invoke(main, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    assert report["ok"] and [s["pass_name"] for s in report["steps"]] == ["prune", "cluster", "int8-static"]
    assert report["entropy"]["transfer_bytes"] < report["original"]["size_bytes"]
    assert all("macs" in s and "nonzero_params" in s for s in report["steps"])


def test_the_compress_command_turns_a_bad_spec_into_a_usage_message(digits_mlp: model_zoo.ZooModel, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["compress", str(digits_mlp.onnx_path), "--pipeline", "prune:2",
                                       "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code != 0 and "sparsity must be in" in result.output


def test_without_data_the_pipeline_runs_on_random_inputs_and_says_so(digits_mlp: model_zoo.ZooModel, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["compress", str(digits_mlp.onnx_path), "--pipeline", "prune:0.5,entropy",
                                       "-o", str(tmp_path / "x.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["fidelity"]["synthetic"] and "bias correction skipped: no calibration data" in report["steps"][0]["notes"]
    assert np.isfinite(report["compression_ratio"])


def test_every_pipeline_alias_is_documented() -> None:
    from edgefleet.compiler.compress import ALIASES

    doc = (Path(__file__).resolve().parent.parent / "docs" / "compression.md").read_text()
    for alias in ALIASES:
        assert f"`{alias}" in doc, f"docs/compression.md does not document the {alias!r} pipeline item"


def test_a_pass_that_fails_on_a_node_names_the_node(digits_mlp: model_zoo.ZooModel, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.compiler.passes.channel_prune import ChannelPrune

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("cannot slice this weight")

    monkeypatch.setattr(ChannelPrune, "_rewire", broken)
    model, data = _digits(digits_mlp)
    with pytest.raises(PipelineError) as err:
        run_pipeline(model, parse_pipeline("prune:0.5,channels:0.5"), data)
    assert err.value.node == "mm0" and err.value.ran == ("prune",)
    assert "at node 'mm0'" in str(err.value) and "cannot slice this weight" in str(err.value) and "try: lower the ratio" in str(err.value)


def test_weight_passes_after_int8_fail_saying_to_reorder(digits_mlp: model_zoo.ZooModel) -> None:
    model, data = _digits(digits_mlp)
    with pytest.raises(PipelineError, match="after int8-static: .*run cluster before int8"):
        run_pipeline(model, parse_pipeline("int8,cluster:4"), data)
