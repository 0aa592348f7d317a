"""ONNX -> TFLite on whole models: the digits MLP and CNN (trained) and random-weight architectures,
the `edgefleet convert` command, and a LiteRT package made end to end with the (unregistered) exporter."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgefleet.agent import runtimes
from edgefleet.agent.package import load_test_vectors, read_manifest
from edgefleet.compiler import model_zoo, targets
from edgefleet.compiler.passes import Fp32Config
from edgefleet.compiler.tflite import convert
from edgefleet.compiler.tflite.exporter import LiteRTExporter
from edgefleet.compiler.tflite.verify import compare
from edgefleet.deploy.cli import main
from edgefleet.hardware_profiles.schema import Runtime

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> model_zoo.ZooModel:
    return model_zoo.digits_cnn(tmp_path_factory.mktemp("zoo_cnn"))


def test_the_digits_cnn_is_trained_without_torch_and_cached(digits_cnn: model_zoo.ZooModel) -> None:
    assert digits_cnn.accuracy > 0.9
    again = model_zoo.digits_cnn(digits_cnn.onnx_path.parent)
    assert again.accuracy == digits_cnn.accuracy


def test_trained_models_match_on_real_digits(digits_mlp: model_zoo.ZooModel, digits_cnn: model_zoo.ZooModel) -> None:
    for zoo in (digits_mlp, digits_cnn):
        model = onnx.load(zoo.onnx_path)
        result = convert(model)
        with np.load(zoo.validation_path) as data:
            feeds = [{"input": row[None]} for row in data["input"][:50]]
        comparison = compare(model, result.tflite_bytes, result.inputs, feeds=feeds)
        assert comparison.max_rel_error <= TOLERANCE, (zoo.name, comparison.errors)


@pytest.mark.parametrize("name", list(model_zoo.ARCHITECTURES))
def test_architectures_match_onnxruntime(name: str) -> None:
    model = model_zoo.ARCHITECTURES[name](0)
    result = convert(model)
    comparison = compare(model, result.tflite_bytes, result.inputs, samples=3)
    assert comparison.max_rel_error <= TOLERANCE, comparison.errors
    counts = result.report.op_counts
    # Every BatchNormalization folds into its Conv, every Relu/Relu6 fuses into the op before it.
    assert not {"MUL", "RELU", "RELU6"} & set(counts), counts
    # Layout changes once: the NCHW input (a TRANSPOSE, or a RESHAPE when it has one channel), none per conv.
    assert result.report.transposes <= 1, counts
    convs = counts.get("CONV_2D", 0) + counts.get("DEPTHWISE_CONV_2D", 0)
    assert convs >= 5


def test_flatten_after_conv_transposes_back_once(digits_cnn: model_zoo.ZooModel) -> None:
    result = convert(onnx.load(digits_cnn.onnx_path))
    # One channel in: the input needs only a RESHAPE; Flatten needs NCHW order: one TRANSPOSE.
    assert result.report.transposes == 1
    assert result.inputs[0].shape == [1, 1, 8, 8] and result.outputs[0].shape == [1, 10]


def test_the_cli_converts_and_reports_the_error(digits_cnn: model_zoo.ZooModel, tmp_path: Path) -> None:
    out = tmp_path / "cnn.tflite"
    run = CliRunner().invoke(main, ["convert", str(digits_cnn.onnx_path), "-o", str(out), "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.output[run.output.index("{"):])
    assert report["ok"] and report["max_rel_error"] <= TOLERANCE
    assert report["operators"] == sum(report["op_counts"].values())
    assert out.read_bytes()[4:8] == b"TFL3" and report["size_bytes"] == out.stat().st_size

    text = CliRunner().invoke(main, ["convert", str(digits_cnn.onnx_path), "-o", str(out)])
    assert text.exit_code == 0 and "max relative error vs onnxruntime" in text.output and "8 operators" in text.output


def test_the_cli_names_the_unsupported_node(tmp_path: Path) -> None:
    h = onnx.helper
    graph = h.make_graph([h.make_node("Det", ["x"], ["y"], name="determinant")], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [])])
    path = tmp_path / "det.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), path)
    run = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "det.tflite")])
    assert run.exit_code == 1
    assert "node 'determinant' (Det)" in run.output


def test_the_cli_input_shape_option(tmp_path: Path) -> None:
    text = '<ir_version: 8, opset_import: ["" : 17]>\ng (float[N, 3, H, W] x) => (float[N, 3, H, W] y) {\ny = Sigmoid (x)\n}'
    path = tmp_path / "dyn.onnx"
    onnx.save(onnx.parser.parse_model(text), path)
    out = tmp_path / "dyn.tflite"
    bad = CliRunner().invoke(main, ["convert", str(path), "-o", str(out), "--input-shape", "x:1,3,a"])
    assert bad.exit_code == 1 and "NAME:DIMS" in bad.output
    ok = CliRunner().invoke(main, ["convert", str(path), "-o", str(out), "--input-shape", "x:1,3,4,5", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output[ok.output.index("{"):])["inputs"][0]["shape"] == [1, 3, 4, 5]


def test_a_litert_package_end_to_end(
    digits_cnn: model_zoo.ZooModel, signing_key: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the exporter registered, a phone profile gets a .tflite whose test vectors LiteRT reproduces."""
    from edgefleet.compiler.compile import compile_model

    monkeypatch.setitem(targets.EXPORTERS, Runtime.LITERT, LiteRTExporter())
    (result,) = compile_model(
        digits_cnn.onnx_path, ["android-midrange"], out_dir=tmp_path, key_path=signing_key[0],
        evaluation=digits_cnn.validation_path, candidates=(Fp32Config(),),
    )
    assert result.runtime == "litert" and result.choice == "fp32"
    manifest = read_manifest(result.package_path)
    assert manifest.model_file == "model.tflite"
    assert [s.shape for s in manifest.inputs] == [[1, 1, 8, 8]]
    with zipfile.ZipFile(result.package_path) as z:
        (tmp_path / "model.tflite").write_bytes(z.read("model.tflite"))
        inputs, expected = load_test_vectors(z.read(manifest.test_vectors.file))
    loaded = runtimes.load(tmp_path / "model.tflite", "litert")
    for feed, want in zip(inputs, expected, strict=True):
        got = loaded.run(feed)
        np.testing.assert_allclose(got[0], want[0], rtol=manifest.test_vectors.rtol, atol=manifest.test_vectors.atol)
