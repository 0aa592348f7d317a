"""Microcontroller packages: full-integer int8 TFLite checked and measured in the TFLite Micro interpreter."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent.errors import RuntimeLoadError
from edgefleet.agent.keys import TrustStore, load_public
from edgefleet.agent.package import load_test_vectors, verify_package
from edgefleet.agent.runtimes import load as load_runtime
from edgefleet.compiler import model_zoo
from edgefleet.compiler.cli import compile_command
from edgefleet.compiler.compile import CompileResult, compile_model
from edgefleet.compiler.errors import NoCandidateFits
from edgefleet.compiler.tflite.verify import run_tflite
from edgefleet.compiler.tflm import c_source, micro
from edgefleet.compiler.tflm.candidates import (
    MAX_SOFTMAX_STEPS_FROM_LITERT,
    MAX_STEPS_FROM_LITERT,
    dequantize_array,
    quantize_array,
)
from edgefleet.hardware_profiles import load_profile

PROFILES = ["nucleo-l4r5zi", "arduino-nano-33-ble-sense"]


@pytest.fixture(scope="module")
def zoo(digits_mlp: model_zoo.ZooModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, model_zoo.ZooModel]:
    return {"mlp": digits_mlp, "cnn": model_zoo.digits_cnn(tmp_path_factory.mktemp("cnn"))}


@pytest.fixture(scope="module")
def packages(zoo: dict[str, model_zoo.ZooModel], signing_key: tuple[Path, Path],
             tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], CompileResult]:
    out = tmp_path_factory.mktemp("tflm-packages")
    results = {}
    for kind, z in zoo.items():
        for r in compile_model(z.onnx_path, PROFILES, calibration=z.calibration_path, evaluation=z.validation_path,
                               out_dir=out, key_path=signing_key[0], name=f"digits-{kind}"):
            results[(kind, r.profile)] = r
    return results


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def test_packages_verify_and_carry_int8_io_with_its_quantization(packages: dict[tuple[str, str], CompileResult],
                                                                  signing_key: tuple[Path, Path]) -> None:
    trust = TrustStore([load_public(signing_key[1])])
    assert len(packages) == 4
    for (_, profile), result in packages.items():
        manifest = verify_package(result.package_path, trust)
        assert manifest.target.runtime == "tflm" and manifest.target.profile == profile
        assert result.choice == "tflm-int8" and manifest.compression["io"] == "int8"
        assert set(manifest.files) == {"model.tflite", "model_data.cc", "model_data.h", "test_vectors.npz"}
        for spec in [*manifest.inputs, *manifest.outputs]:
            assert spec.dtype == "int8"
            assert spec.quantization is not None and spec.quantization.scale[0] > 0


def test_tflm_outputs_match_litert_int8_within_the_allowed_steps(packages: dict[tuple[str, str], CompileResult]) -> None:
    for result in packages.values():
        files = members(result.package_path)
        inputs, expected = load_test_vectors(files["test_vectors.npz"])
        assert all(v.dtype == np.int8 for feed in inputs for v in feed.values())
        model = files["model.tflite"]
        # The expected outputs are TFLM's own, and TFLM reproduces them exactly.
        rerun = micro.run(model, inputs)
        for i, outs in enumerate(expected):
            np.testing.assert_array_equal(rerun[0][i], outs[0])
        litert = run_tflite(model, inputs)[result.manifest.outputs[0].name]
        steps = np.abs(rerun[0].astype(np.int32) - litert.astype(np.int32)).max()
        # The digits models end in a Softmax, which the two runtimes compute by different algorithms.
        assert steps <= MAX_SOFTMAX_STEPS_FROM_LITERT
        assert steps <= result.manifest.metrics["tflm_max_steps_from_litert"] <= MAX_SOFTMAX_STEPS_FROM_LITERT


def test_arena_and_flash_are_recorded_and_fit_the_profile(packages: dict[tuple[str, str], CompileResult]) -> None:
    for (_, profile), result in packages.items():
        metrics = result.manifest.metrics
        ram = load_profile(profile).memory.ram
        model = members(result.package_path)["model.tflite"]
        assert 0 < metrics["tflm_arena_bytes"] < ram and metrics["ram_available_bytes"] == ram
        assert metrics["flash_bytes"] == len(model) == metrics["size_bytes"]
        # The recorded arena is what TFLM needs: it runs in that many bytes (the measure is to 16 bytes).
        feed = load_test_vectors(members(result.package_path)["test_vectors.npz"])[0][0]
        assert micro.runs_in(model, feed, metrics["tflm_arena_bytes"])
        assert not micro.runs_in(model, feed, metrics["tflm_arena_bytes"] - micro.ARENA_GRANULE)


def test_model_data_cc_holds_the_exact_bytes_16_byte_aligned(packages: dict[tuple[str, str], CompileResult]) -> None:
    for result in packages.values():
        files = members(result.package_path)
        cc, header = files["model_data.cc"].decode(), files["model_data.h"].decode()
        assert c_source.parse_array(cc) == files["model.tflite"]
        assert "alignas(16) const unsigned char g_model[] = {" in cc
        assert f"const unsigned int g_model_len = {len(files['model.tflite'])};" in cc
        assert "extern const unsigned char g_model[];" in header
        arena = re.search(r"kTensorArenaSize = (\d+);", header)
        assert arena is not None and int(arena.group(1)) == result.manifest.metrics["tflm_arena_bytes"]


def test_int8_accuracy_in_tflm_is_within_one_point_of_fp32(packages: dict[tuple[str, str], CompileResult],
                                                           zoo: dict[str, model_zoo.ZooModel]) -> None:
    for kind, z in zoo.items():
        result = packages[(kind, "nucleo-l4r5zi")]
        files = members(result.package_path)
        (spec_in,), (spec_out,) = result.manifest.inputs, result.manifest.outputs
        with np.load(z.validation_path) as v:
            x, labels = v["input"], v["labels"]
        feeds = [{spec_in.name: quantize_array(x[i].reshape(spec_in.shape), spec_in)} for i in range(len(x))]
        probs = dequantize_array(micro.run(files["model.tflite"], feeds)[0], spec_out).reshape(len(x), -1)
        accuracy = float(np.mean(probs.argmax(axis=1) == labels))
        assert accuracy >= z.accuracy - 0.01, (kind, accuracy, z.accuracy)
        assert result.manifest.metrics["fidelity"]["accuracy"] == pytest.approx(accuracy)


def _big_gemm(path: Path, inputs: int, hidden: int) -> tuple[Path, Path]:
    """x[1, inputs] -> Gemm -> Relu -> Gemm -> y[1, 10], with calibration data."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((inputs, hidden)) / np.sqrt(inputs)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array((rng.standard_normal((hidden, 10)) / np.sqrt(hidden)).astype(np.float32), "W2")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W2"], ["y"])],
        "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    calibration = path.with_suffix(".npz")
    np.savez(calibration, x=rng.standard_normal((24, 1, inputs)).astype(np.float32))
    return path, calibration


@pytest.mark.parametrize(
    ("inputs", "hidden", "profile", "needed"),
    [
        (64, 32768, "arduino-nano-33-ble-sense", r"model \S+ MiB > 1\.0 MiB flash \((\d+) bytes > 1048576 bytes\)"),
        (300_000, 1, "arduino-nano-33-ble-sense", r"TFLM tensor arena \S+ KiB \((\d+) bytes\) > 256\.0 KiB RAM \(262144 bytes\)"),
    ],
    ids=["flash", "ram"],
)
def test_a_model_too_big_for_the_profile_is_refused_with_the_numbers(
        inputs: int, hidden: int, profile: str, needed: str, signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    model, calibration = _big_gemm(tmp_path / "big.onnx", inputs, hidden)
    with pytest.raises(NoCandidateFits, match="no candidate fits arduino-nano-33-ble-sense") as info:
        compile_model(model, [profile], calibration=calibration, out_dir=tmp_path / "out", key_path=signing_key[0])
    message = " ".join(str(info.value).split())  # the report wraps its lines
    match = re.search(needed, message)
    assert match is not None, message
    assert int(match.group(1)) > (1048576 if "flash" in needed else 262144)
    assert "prune channels, cluster weights, or choose a smaller model" in message
    assert not (tmp_path / "out").exists()


def test_the_cli_compiles_for_a_microcontroller(digits_mlp: model_zoo.ZooModel, signing_key: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    result = CliRunner().invoke(compile_command, [
        str(digits_mlp.onnx_path), "--profile", "nucleo-l4r5zi", "--calibration", str(digits_mlp.calibration_path),
        "--key", str(signing_key[0]), "-o", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    assert "nucleo-l4r5zi (tflm): chose tflm-int8" in result.output
    assert (tmp_path / "digits_mlp-nucleo-l4r5zi.efpkg").exists()


def test_without_calibration_a_microcontroller_package_is_refused_with_what_to_do(
        digits_mlp: model_zoo.ZooModel, signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(compile_command, [
        str(digits_mlp.onnx_path), "--profile", "arduino-nano-33-ble-sense", "--key", str(signing_key[0]), "-o", str(tmp_path),
    ])
    assert result.exit_code != 0
    assert "needs calibration samples" in result.output and "--calibration" in result.output


def test_a_linux_agent_does_not_run_a_tflm_package(packages: dict[tuple[str, str], CompileResult], tmp_path: Path) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(members(packages[("mlp", "nucleo-l4r5zi")].package_path)["model.tflite"])
    with pytest.raises(RuntimeLoadError, match="runtime 'tflm' cannot run on this device"):
        load_runtime(model, "tflm")


def test_c_source_round_trips_any_bytes() -> None:
    data = bytes(range(256)) * 3 + b"\x01"
    files = c_source.source_files(data, package="p@1:x", arena_bytes=1234)
    assert c_source.parse_array(files["model_data.cc"].decode()) == data
    assert b"kTensorArenaSize = 1234;" in files["model_data.h"]
    with pytest.raises(ValueError, match="g_model_len"):
        c_source.parse_array(files["model_data.cc"].decode().replace(f"= {len(data)};", "= 5;"))


def test_constants_written_after_the_flatbuffer_are_moved_back_in_for_tflm() -> None:
    from ai_edge_quantizer import quantizer, recipe

    from edgefleet.compiler.tflite import convert
    from edgefleet.compiler.tflm.flatbuffer import has_offset_buffers, inline_buffers

    # 64 x 4096 int8 weights: over the 256 KiB at which ai-edge-quantizer stores buffers by offset.
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((64, 4096)) / 8).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    calibration = [{"x": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(8)]
    # ai-edge-quantizer's own file (tflite.quantize repacks it with every buffer inline).
    q = quantizer.Quantizer(bytearray(convert(model).tflite_bytes), recipe.static_wi8_ai8())
    quantized = bytes(q.quantize(q.calibrate({"serving_default": calibration})).quantized_model)
    assert has_offset_buffers(quantized)
    inlined = inline_buffers(quantized)
    assert not has_offset_buffers(inlined) and inline_buffers(inlined) == inlined
    feeds = [{"x": rng.integers(-128, 128, (1, 64)).astype(np.int8)} for _ in range(3)]
    tflm = micro.run(inlined, feeds)[0].astype(np.int32)
    litert = run_tflite(quantized, feeds)["y"].astype(np.int32)
    assert np.abs(tflm - litert).max() <= MAX_STEPS_FROM_LITERT
    assert len(np.unique(tflm)) > 10  # on the offset layout TFLM runs on empty weights: every output the same


def test_only_outputs_a_softmax_writes_get_the_softmax_tolerance() -> None:
    from edgefleet.compiler.tflite import convert
    from edgefleet.compiler.tflm.candidates import _softmax_outputs

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert _softmax_outputs(convert(model).tflite_bytes) == {"p"}
