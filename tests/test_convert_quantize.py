"""TFLite quantization with ai-edge-quantizer: every mode runs in LiteRT and keeps the digits models' answers."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from click.testing import CliRunner

from edgefleet.agent import runtimes
from edgefleet.agent.keys import TrustStore
from edgefleet.agent.package import load_test_vectors, verify_package
from edgefleet.compiler import calibration, inference, model_zoo
from edgefleet.compiler.tflite import convert
from edgefleet.compiler.tflite.quantize import (
    MODES,
    Mode,
    QuantizationError,
    constant_bytes,
    evaluate,
    quantize,
)
from edgefleet.deploy.cli import main


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> model_zoo.ZooModel:
    return model_zoo.digits_cnn(tmp_path_factory.mktemp("zoo_cnn_q"))


class Converted:
    """A zoo model converted to fp32 TFLite, with its calibration and held-out digits and the ONNX outputs on them."""

    def __init__(self, zoo: model_zoo.ZooModel) -> None:
        self.zoo = zoo
        self.onnx = onnx.load(zoo.onnx_path)
        self.result = convert(self.onnx)
        self.calibration = calibration.load_dataset(zoo.calibration_path, self.result.inputs)
        self.held_out = calibration.load_dataset(zoo.validation_path, self.result.inputs)
        self.feeds = list(self.held_out.feeds())
        self.reference = inference.run_model(self.onnx, self.feeds)
        self.names = [s.name for s in self.result.outputs]
        self._cache: dict[str, bytes] = {}

    def quantized(self, mode: str) -> bytes:
        if mode not in self._cache:
            self._cache[mode] = quantize(self.result.tflite_bytes, mode, calibration=list(self.calibration.feeds())).tflite_bytes
        return self._cache[mode]


@pytest.fixture(scope="module")
def models(digits_mlp: model_zoo.ZooModel, digits_cnn: model_zoo.ZooModel) -> dict[str, Converted]:
    return {"mlp": Converted(digits_mlp), "cnn": Converted(digits_cnn)}


def tensor_types(data: bytes) -> dict[str, int]:
    sg = schema.ModelT.InitFromPackedBuf(data, 0).subgraphs[0]
    return {t.name.decode(): t.type for t in sg.tensors}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_mode_runs_in_litert_with_float_io_and_keeps_the_answers(models: dict[str, Converted], model: str, mode: str) -> None:
    m = models[model]
    data = m.quantized(mode)
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    assert [(d["name"], d["dtype"]) for d in interpreter.get_input_details()] == [("input", np.float32)]
    assert [(d["name"], d["dtype"]) for d in interpreter.get_output_details()] == [("probabilities", np.float32)]
    f = evaluate(m.reference, data, m.feeds, m.names, labels=m.held_out.labels)
    # int4 weights cost a little: 1 of 450 digits changes; every 8-bit-or-wider mode keeps them all.
    assert f.top1_agreement is not None and f.top1_agreement >= (0.99 if mode == "int4" else 0.995)
    assert f.sqnr_db is not None and f.sqnr_db > (20 if mode == "int4" else 30)
    assert len(data) < len(m.result.tflite_bytes)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_int8_is_full_integer_per_channel_and_its_weights_shrink_by_more_than_3_5x(models: dict[str, Converted], model: str) -> None:
    m = models[model]
    data = m.quantized("int8")
    model_t = schema.ModelT.InitFromPackedBuf(data, 0)
    sg = model_t.subgraphs[0]
    weights = [t for t in sg.tensors if t.name.decode().endswith("/weights")]
    assert weights and all(t.type == schema.TensorType.INT8 and len(t.quantization.scale) == t.shape[0] for t in weights)
    # Every tensor between the added QUANTIZE and DEQUANTIZE is integer: no float kernel runs inside.
    floats = [name for name, kind in tensor_types(data).items() if kind == schema.TensorType.FLOAT32]
    assert sorted(floats) == ["input", "probabilities"]
    # Constants (what quantization shrinks) are > 3.5x smaller; the whole file less so on a model this small,
    # because per-channel scales, int64 zero points and the operator tables are a few KB of fixed cost.
    assert constant_bytes(m.result.tflite_bytes) / constant_bytes(data) >= 3.5
    assert len(m.result.tflite_bytes) / len(data) >= (2.7 if model == "mlp" else 2.2)
    f = evaluate(m.reference, data, m.feeds, m.names, labels=m.held_out.labels)
    assert f.top1_agreement is not None and f.top1_agreement >= 0.99
    assert f.accuracy is not None and f.accuracy >= f.reference_accuracy - 0.005


def test_fp16_halves_the_weights_in_the_standard_tflite_layout(models: dict[str, Converted]) -> None:
    for m in models.values():
        data = m.quantized("fp16")
        types = tensor_types(data)
        assert {k for k, v in types.items() if k.endswith("/weights")} <= {k for k, v in types.items() if v == schema.TensorType.FLOAT16}
        model_t = schema.ModelT.InitFromPackedBuf(data, 0)
        assert schema.BuiltinOperator.DEQUANTIZE in {c.builtinCode for c in model_t.operatorCodes}
        assert constant_bytes(m.result.tflite_bytes) / constant_bytes(data) == pytest.approx(2.0, abs=0.05)
    assert len(models["mlp"].result.tflite_bytes) / len(models["mlp"].quantized("fp16")) > 1.9


def test_int16x8_has_int16_activations(models: dict[str, Converted]) -> None:
    types = tensor_types(models["cnn"].quantized("int16x8"))
    assert types["r1"] == schema.TensorType.INT16 and types["conv2/weights"] == schema.TensorType.INT8


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_calibrated_modes_need_calibration_data(models: dict[str, Converted], mode: str) -> None:
    with pytest.raises(QuantizationError, match=f"{mode} quantizes activations and needs calibration samples"):
        quantize(models["mlp"].result.tflite_bytes, mode)
    with pytest.raises(QuantizationError, match="unknown quantization mode 'int2'"):
        quantize(models["mlp"].result.tflite_bytes, "int2")
    assert Mode(mode).needs_calibration and not Mode.DYNAMIC.needs_calibration


def test_the_cli_quantizes_and_reports_fidelity(digits_cnn: model_zoo.ZooModel, tmp_path: Path) -> None:
    out = tmp_path / "cnn-int8.tflite"
    args = ["convert", str(digits_cnn.onnx_path), "-o", str(out), "--quantize", "int8"]
    run = CliRunner().invoke(main, [*args, "--calibration", str(digits_cnn.calibration_path), "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.output[run.output.index("{"):])
    q = report["quantization"]
    assert q["mode"] == "int8" and q["recipe"] == "static_wi8_ai8" and q["size_bytes"] == out.stat().st_size
    assert q["fidelity"]["top1_agreement"] >= 0.99 and not q["fidelity"]["synthetic"]
    assert q["calibration_samples"] == 150  # a quarter of the 200 held out to measure fidelity

    text = CliRunner().invoke(main, ["convert", str(digits_cnn.onnx_path), "-o", str(out), "--quantize", "fp16"])
    assert text.exit_code == 0, text.output
    assert "fidelity vs fp32 on 64 random inputs: top-1 agreement" in text.output and "max abs error" in text.output

    missing = CliRunner().invoke(main, args)
    assert missing.exit_code == 1 and "--quantize int8 quantizes activations and needs --calibration DATA" in missing.output


def test_a_phone_gets_an_int8_tflite_package_whose_vectors_pass_in_the_agents_litert(
    digits_cnn: model_zoo.ZooModel, signing_key: tuple[Path, Path], tmp_path: Path
) -> None:
    from edgefleet.compiler.compile import compile_model

    phone, pi = compile_model(
        digits_cnn.onnx_path, ["android-midrange", "raspberry-pi-4"], out_dir=tmp_path, key_path=signing_key[0],
        calibration=digits_cnn.calibration_path, evaluation=digits_cnn.validation_path,
    )
    assert (phone.runtime, phone.choice) == ("litert", "litert-int8-static")
    assert pi.runtime == "onnxruntime" and not pi.choice.startswith("litert")
    schemes = {v.candidate.scheme: v for v in phone.plan.verdicts}
    assert set(schemes) == {"fp32", "litert-fp16", "litert-int8-dynamic", "litert-int8-static"}
    assert all(v.feasible for v in schemes.values())
    manifest = verify_package(phone.package_path, TrustStore.from_paths([signing_key[1]]))
    assert manifest.model_file == "model.tflite" and manifest.target.runtime == "litert"
    assert manifest.compression["mode"] == "int8" and manifest.compression["tool"] == "ai-edge-quantizer"
    with zipfile.ZipFile(phone.package_path) as z:
        (tmp_path / "model.tflite").write_bytes(z.read("model.tflite"))
        inputs, expected = load_test_vectors(z.read(manifest.test_vectors.file))
    loaded = runtimes.load(tmp_path / "model.tflite", "litert")
    assert loaded.runtime == "litert"
    for feed, want in zip(inputs, expected, strict=True):
        got = loaded.run(feed)
        np.testing.assert_allclose(got[0], want[0], rtol=manifest.test_vectors.rtol, atol=manifest.test_vectors.atol)


def test_without_calibration_a_phone_gets_fp16(digits_cnn: model_zoo.ZooModel, signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    from edgefleet.compiler.compile import compile_model

    (phone,) = compile_model(digits_cnn.onnx_path, ["android-flagship"], out_dir=tmp_path, key_path=signing_key[0],
                             evaluation=digits_cnn.validation_path)
    # int8-static is skipped without data; fp16 and dynamic int8 are both fast formats here, and
    # static (fp16 weights) beats quantizing activations on every call.
    assert phone.choice == "litert-fp16"
    assert phone.manifest.report["skipped"]["litert-int8-static"] == "no calibration data"


def test_a_phone_falls_back_to_onnxruntime_when_the_model_does_not_convert(signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    from edgefleet.compiler.compile import compile_model

    text = '<ir_version: 8, opset_import: ["" : 17]>\ng (float[1, 8] x) => (float[1, 8] y) {\ny = Sin (x)\n}'
    path = tmp_path / "sin.onnx"
    onnx.save(onnx.parser.parse_model(text), path)
    (phone,) = compile_model(path, ["android-midrange"], out_dir=tmp_path, key_path=signing_key[0])
    assert phone.runtime == "onnxruntime"
    assert any("prefers litert, but the model does not convert to TFLite" in n and "'Sin'" in n for n in phone.notes)
