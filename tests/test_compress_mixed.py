"""Mixed precision: per-layer sensitivity, then the most sensitive layers kept float until the budget holds (onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgefleet.compiler import calibration, model_zoo
from edgefleet.compiler.compress import parse_pipeline, run_pipeline
from edgefleet.compiler.compress_cli import compress_command
from edgefleet.compiler.errors import PassError
from edgefleet.compiler.onnx_model import load_model
from edgefleet.compiler.passes import (
    MixedPrecision,
    MixedPrecisionConfig,
    PassData,
    StaticInt8,
    build_pass,
)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, PassData]:
    zoo = model_zoo.digits_cnn(tmp_path_factory.mktemp("cnn"))
    loaded = load_model(zoo.onnx_path)
    data = PassData(evaluation=calibration.load_dataset(zoo.validation_path, loaded.inputs).take(range(100)),
                    calibration=calibration.load_dataset(zoo.calibration_path, loaded.inputs).take(range(64)))
    return loaded.model, data


def float_layers(model: onnx.ModelProto) -> set[str]:
    """Conv/Gemm/MatMul nodes whose weight is a float initializer rather than a DequantizeLinear output."""
    inits = {i.name for i in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits}


def test_a_loose_budget_quantizes_every_layer(cnn: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = cnn
    result = MixedPrecision(MixedPrecisionConfig(budget=20.0))(model, data)
    assert float_layers(result.model) == set()
    assert any("holds with 0 of 3 layers float" in n for n in result.report.notes)


def test_a_tight_budget_keeps_the_most_sensitive_layer_float_and_beats_plain_int8(cnn: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = cnn
    mixed = MixedPrecision(MixedPrecisionConfig(budget=40.0))
    tuning, _ = mixed.tune(model, data.calibration)  # type: ignore[arg-type]
    assert {s.layer for s in tuning.sensitivity} == {"conv1", "conv2", "dense"}
    most_sensitive = min(tuning.sensitivity, key=lambda s: s.sqnr_db or np.inf).layer
    result = mixed(model, data)
    kept = float_layers(result.model)
    assert most_sensitive in kept and len(kept) < 3
    assert tuning.met and tuning.steps[-1].sqnr_db is not None and tuning.steps[-1].sqnr_db >= 40.0
    assert tuning.steps[0].float_layers == () and not tuning.steps[0].meets_budget
    plain = StaticInt8()(model, data).report.fidelity
    assert result.report.fidelity.sqnr_db is not None and plain.sqnr_db is not None
    assert result.report.fidelity.sqnr_db > plain.sqnr_db
    # The table is in the notes, most sensitive first.
    assert result.report.notes[1].strip().startswith(most_sensitive)


def test_an_unreachable_budget_returns_the_best_model_and_says_so(cnn: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = cnn
    result = MixedPrecision(MixedPrecisionConfig(budget=200.0, max_float_fraction=0.34))(model, data)
    assert len(float_layers(result.model)) == 1
    note = result.report.notes[-1]
    assert note.startswith("BUDGET NOT MET") and "max_float_fraction=0.34" in note and "try" in note


def test_an_agreement_budget_on_a_classifier(cnn: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = cnn
    result = MixedPrecision(MixedPrecisionConfig(metric="agreement", budget=0.99))(model, data)
    assert result.report.fidelity.top1_agreement is not None and result.report.fidelity.top1_agreement >= 0.97


def test_mixed_needs_real_calibration_data(cnn: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = cnn
    with pytest.raises(PassError, match="calibration"):
        MixedPrecision()(model, PassData(evaluation=data.evaluation))


def test_mixed_config_rejects_nonsense_and_round_trips() -> None:
    with pytest.raises(ValueError, match="metric"):
        MixedPrecisionConfig(metric="loss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fraction"):
        MixedPrecisionConfig(metric="agreement", budget=99.0)
    (config,) = parse_pipeline("mixed:35:max_float_fraction=0.25")
    assert config == MixedPrecisionConfig(budget=35.0, max_float_fraction=0.25)
    assert build_pass(config.to_dict()).config == config


def test_mixed_runs_in_a_pipeline(cnn: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = cnn
    result = run_pipeline(model, parse_pipeline("mixed:40,entropy"), data)
    assert result.steps[0].report.pass_name == "mixed-int8"
    assert result.final_bytes < result.original.size_bytes


def test_the_compress_command_prints_the_sensitivity_table(tmp_path: Path) -> None:
    zoo = model_zoo.digits_cnn(tmp_path / "zoo")
    out = tmp_path / "mixed.onnx"
    result = CliRunner().invoke(compress_command, [str(zoo.onnx_path), "--pipeline", "mixed:40,entropy", "--data",
                                                   str(zoo.validation_path), "--calibration", str(zoo.calibration_path),
                                                   "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "mixed precision" in result.output and "conv1 (Conv)" in result.output
    assert "holds with 1 of 3 layers float: conv1" in result.output
    assert onnx.load(str(out)).graph.node


def test_batchnorm_is_folded_before_the_layers_are_quantized() -> None:
    model = model_zoo.mobilenetv2_block()
    images = np.random.default_rng(0).standard_normal((16, 1, 3, 32, 32)).astype(np.float32)
    data = calibration.Dataset(arrays={"input": images}, source="test")
    result = MixedPrecision(MixedPrecisionConfig(budget=20.0))(model, PassData(evaluation=data, calibration=data))
    assert not [n for n in result.model.graph.node if n.op_type == "BatchNormalization"]
    assert "folded 7 BatchNormalization(s) into the Conv before each, so none runs in float" in result.report.notes
    assert float_layers(result.model) == set()
