"""`edgefleet compile` end to end on the digits MLP: candidates, choice, signed packages, errors."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from click.testing import CliRunner

from edgefleet.agent.keys import TrustStore, load_public
from edgefleet.agent.package import load_test_vectors, verify_package
from edgefleet.compiler import model_zoo
from edgefleet.compiler.cli import compile_command, keys
from edgefleet.compiler.compile import CompileResult, compile_model
from edgefleet.compiler.errors import NoCandidateFits
from edgefleet.hardware_profiles import load_profile


@pytest.fixture(scope="module")
def compiled(digits_mlp: model_zoo.ZooModel, signing_key: tuple[Path, Path],
             tmp_path_factory: pytest.TempPathFactory) -> list[CompileResult]:
    return compile_model(
        digits_mlp.onnx_path, ["raspberry-pi-4", "raspberry-pi-5"], calibration=digits_mlp.calibration_path,
        evaluation=digits_mlp.validation_path, out_dir=tmp_path_factory.mktemp("packages"),
        key_path=signing_key[0], name="digits", version="1",
    )


def rows(result: CompileResult) -> dict[str, dict]:  # type: ignore[type-arg]
    return {row["scheme"]: row for row in result.manifest.report["candidates"]}


def test_the_zoo_model_is_cached_and_as_accurate_as_scikit_learn(digits_mlp: model_zoo.ZooModel) -> None:
    assert digits_mlp.accuracy > 0.95
    again = model_zoo.digits_mlp(digits_mlp.onnx_path.parent)
    assert again == digits_mlp
    with np.load(digits_mlp.validation_path) as v:
        assert v["input"].shape == (450, 64) and v["labels"].shape == (450,)


def test_static_int8_keeps_99_percent_agreement_and_is_over_3x_smaller(compiled: list[CompileResult]) -> None:
    for result in compiled:
        table = rows(result)
        static, fp32 = table["int8-static"], table["fp32"]
        assert static["top1_agreement"] >= 0.99
        assert static["size_bytes"] * 3 <= fp32["size_bytes"]
        assert static["params"] == fp32["params"]
        assert set(table) == {"fp32", "int8-static", "int8-dynamic"}
        # int8 is fast on both Pis, and static quantization is preferred over dynamic.
        assert result.choice == "int8-static" and static["chosen"]
        assert result.manifest.report["evaluation"] == {
            "samples": 450, "synthetic": False, "source": str(result.manifest.report["evaluation"]["source"]), "labels": True,
        }


def test_each_profile_gets_a_package_signed_by_the_key(compiled: list[CompileResult], signing_key: tuple[Path, Path]) -> None:
    trust = TrustStore([load_public(signing_key[1])])
    assert [r.package_path.name for r in compiled] == ["digits-raspberry-pi-4.efpkg", "digits-raspberry-pi-5.efpkg"]
    for result in compiled:
        manifest = verify_package(result.package_path, trust)
        assert manifest.target.profile == result.profile and manifest.target.runtime == "onnxruntime"
        assert manifest.compression == rows(result)[result.choice]["config"]
        assert manifest.compression["scheme"] == "int8-static" and manifest.compression["per_channel"] is True
        assert [(s.name, s.shape, s.dtype) for s in manifest.inputs] == [("input", [1, 64], "float32")]
        assert [(s.name, s.shape, s.dtype) for s in manifest.outputs] == [("probabilities", [1, 10], "float32")]
        assert manifest.metrics["size_bytes"] == result.size_bytes == manifest.files["model.onnx"].size
        assert manifest.metrics["fidelity"]["top1_agreement"] >= 0.99


def test_the_test_vectors_reproduce_with_onnxruntime(compiled: list[CompileResult]) -> None:
    for result in compiled:
        spec = result.manifest.test_vectors
        assert spec is not None and spec.count == 4
        with zipfile.ZipFile(result.package_path) as z:
            model = z.read(result.manifest.model_file)
            inputs, expected = load_test_vectors(z.read(spec.file))
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        for feed, want in zip(inputs, expected, strict=True):
            got = session.run(None, feed)
            for g, w in zip(got, want, strict=True):
                assert np.allclose(g, w, rtol=spec.rtol, atol=spec.atol)
        # The packaged model is the candidate that was measured: it classifies like the original.
        assert onnx.load_model_from_string(model).graph.input[0].name == "input"


def test_the_cli_prints_a_table_per_profile_and_writes_the_packages(digits_mlp: model_zoo.ZooModel,
                                                                    signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(compile_command, [
        str(digits_mlp.onnx_path), "--profile", "raspberry-pi-4", "--calibration", str(digits_mlp.calibration_path),
        "--key", str(signing_key[0]), "-o", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    assert "raspberry-pi-4 (onnxruntime): chose int8-static" in result.output
    assert "int8-dynamic" in result.output and "why: int8-static for raspberry-pi-4" in result.output
    assert "held out 50 of 200 calibration samples" in result.output
    assert (tmp_path / "digits_mlp-raspberry-pi-4.efpkg").exists()


def test_the_cli_json_output_carries_the_candidates_and_the_reason(digits_mlp: model_zoo.ZooModel,
                                                                   signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(compile_command, [
        str(digits_mlp.onnx_path), "--profile", "raspberry-pi-zero-2-w", "--calibration", str(digits_mlp.calibration_path),
        "--eval", str(digits_mlp.validation_path), "--key", str(signing_key[0]), "-o", str(tmp_path), "--json",
        "--name", "digits", "--version", "2",
    ])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["ok"] is True
    (package,) = out["packages"]
    assert package["profile"] == "raspberry-pi-zero-2-w" and package["choice"] == "int8-static"
    assert Path(package["package"]) == tmp_path / "digits-raspberry-pi-zero-2-w.efpkg"
    assert [c["scheme"] for c in package["candidates"]] == ["fp32", "int8-static", "int8-dynamic"]
    assert package["reason"] and package["budget"] == {"min_agreement": 0.99, "min_sqnr_db": 30.0}


def test_without_calibration_static_int8_is_skipped_and_fidelity_is_flagged_random(
        digits_mlp: model_zoo.ZooModel, signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    (result,) = compile_model(digits_mlp.onnx_path, ["raspberry-pi-4"], out_dir=tmp_path, key_path=signing_key[0])
    report = result.manifest.report
    assert report["skipped"] == {"int8-static": "no calibration data"}
    assert report["evaluation"]["synthetic"] is True and result.manifest.metrics["fidelity"]["synthetic"] is True
    assert result.choice == "int8-dynamic" and "measured on random inputs" in report["reason"]


def test_a_symbolic_batch_is_fixed_to_one_and_noted(digits_mlp: model_zoo.ZooModel, signing_key: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    model = onnx.load(str(digits_mlp.onnx_path))
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, tmp_path / "dynamic.onnx")
    (result,) = compile_model(tmp_path / "dynamic.onnx", ["raspberry-pi-4"], calibration=digits_mlp.calibration_path,
                              out_dir=tmp_path, key_path=signing_key[0])
    assert result.manifest.inputs[0].shape == [1, 64] and result.manifest.outputs[0].shape == [1, 10]
    assert "fixed the batch dimension ('batch') of input 'input' to 1" in result.manifest.report["notes"]


def test_when_no_candidate_fits_the_profile_nothing_is_written(digits_mlp: model_zoo.ZooModel,
                                                               signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    tiny = load_profile("raspberry-pi-4").model_dump(mode="json")
    tiny.update(name="tiny-pi", memory={**tiny["memory"], "ram": "16 KiB"})
    (tmp_path / "tiny-pi.yaml").write_text(yaml.safe_dump(tiny))
    out = tmp_path / "out"
    with pytest.raises(NoCandidateFits, match=r"no candidate fits tiny-pi") as info:
        compile_model(digits_mlp.onnx_path, [str(tmp_path / "tiny-pi.yaml")], calibration=digits_mlp.calibration_path,
                      out_dir=out, key_path=signing_key[0])
    assert "needs ~" in str(info.value) and "RAM > 16.0 KiB" in str(info.value)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx", "--profile", "raspberry-pi-4"], "missing.onnx: no such model file"),
        (["corrupt.onnx", "--profile", "raspberry-pi-4"], "corrupt.onnx: not an ONNX model"),
        (["MODEL", "--profile", "raspbery-pi-4"], "did you mean 'raspberry-pi-4'?"),
        (["MODEL", "--profile", "arduino-nano-33-ble-sense"],
         "a microcontroller package is full-integer int8, which needs calibration samples"),
        (["MODEL", "--profile", "raspberry-pi-4", "--calibration", "shape.npz"],
         "array 'input' has shape [10, 63] but input 'input' is [1, 64]"),
        (["MODEL", "--profile", "raspberry-pi-4", "--calibration", "keys.npz"],
         "the model's inputs are ['input'] but the file has arrays ['images', 'targets']"),
    ],
    ids=["missing-model", "corrupt-model", "unknown-profile", "microcontroller", "calibration-shape", "calibration-keys"],
)
def test_errors_say_what_is_wrong_and_what_to_do(args: list[str], message: str, digits_mlp: model_zoo.ZooModel,
                                                 signing_key: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.onnx").write_bytes(np.random.default_rng(0).bytes(2048))
    np.savez(tmp_path / "shape.npz", input=np.zeros((10, 63), np.float32))
    np.savez(tmp_path / "keys.npz", images=np.zeros((10, 64), np.float32), targets=np.zeros((10, 64)))
    argv = [str(digits_mlp.onnx_path) if a == "MODEL" else a for a in args]
    result = CliRunner().invoke(compile_command, [*argv, "--key", str(signing_key[0]), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_the_default_key_is_created_on_first_use_and_the_log_says_to_trust_it(
        digits_mlp: model_zoo.ZooModel, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home"
    args = [str(digits_mlp.onnx_path), "--profile", "raspberry-pi-4", "--calibration", str(digits_mlp.calibration_path),
            "-o", str(tmp_path / "out"), "--json"]
    with caplog.at_level(logging.WARNING, logger="edgefleet.compiler.cli"):
        result = CliRunner().invoke(compile_command, args, env={"EDGEFLEET_HOME": str(home)})
    assert result.exit_code == 0, result.output
    key = home / "keys" / "signing.key"
    assert key.exists() and key.with_suffix(".pub").exists()
    assert f"created a signing key at {key}" in caplog.text and "--trust" in caplog.text
    manifest = verify_package(tmp_path / "out" / "digits_mlp-raspberry-pi-4.efpkg",
                              TrustStore.from_paths([key.with_suffix(".pub")]))
    assert manifest.signer == json.loads(result.output)["packages"][0]["signer"]


def test_keys_generate_writes_a_pair_prints_its_id_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(keys, ["generate", str(tmp_path / "team.key")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("key id ") and "--trust" in result.output
    assert (tmp_path / "team.key").exists() and (tmp_path / "team.pub").exists()
    again = runner.invoke(keys, ["generate", str(tmp_path / "team.key")])
    assert again.exit_code == 1 and "already exists" in again.output


def test_python_m_model_zoo_writes_the_files(tmp_path: Path) -> None:
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        assert model_zoo.main([str(tmp_path)]) == 0
    assert "digits_mlp: held-out accuracy" in out.getvalue()
    assert (tmp_path / "digits_mlp.onnx").exists() and (tmp_path / "digits_calibration.npz").exists()
