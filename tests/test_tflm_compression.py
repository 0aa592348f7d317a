"""TFLite Micro LUT compression: clustered int8 weights shipped as bit-packed indices, run in the real TFLM interpreter."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from ai_edge_litert import schema_py_generated as schema

from edgefleet.compiler import calibration, inference, model_zoo
from edgefleet.compiler.onnx_model import load_model
from edgefleet.compiler.passes import Cluster, ClusterConfig, PassData
from edgefleet.compiler.tflm import c_source, compression, micro
from edgefleet.compiler.tflm.candidates import TFLMCandidate
from edgefleet.compiler.tflm.target import MODEL_FILE, TFLMTarget


def _tflm(model: onnx.ModelProto, zoo: model_zoo.ZooModel) -> tuple[TFLMCandidate, TFLMCandidate, list[dict[str, np.ndarray]]]:
    loaded = load_model(zoo.onnx_path)
    evaluation = calibration.load_dataset(zoo.validation_path, loaded.inputs).take(range(60))
    calib = calibration.load_dataset(zoo.calibration_path, loaded.inputs)
    reference = tuple(inference.run_model(model, list(evaluation.feeds())))
    plain, small = compression.lut_candidate(model, loaded.inputs, PassData(evaluation=evaluation, calibration=calib,
                                                                             reference=reference))
    return plain, small, [plain.quantize_feed(f) for f in evaluation.feeds()]


@pytest.fixture(scope="module")
def clustered(digits_mlp: model_zoo.ZooModel) -> tuple[TFLMCandidate, TFLMCandidate, list[dict[str, np.ndarray]]]:
    loaded = load_model(digits_mlp.onnx_path)
    evaluation = calibration.load_dataset(digits_mlp.validation_path, loaded.inputs).take(range(20))
    model = Cluster(ClusterConfig(clusters=16))(loaded.model, PassData(evaluation=evaluation)).model
    return _tflm(model, digits_mlp)


def _custom_ops(tflite: bytes) -> set[str]:
    m = schema.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    return {c.customCode.decode() for c in m.operatorCodes if c.customCode}


def test_clustered_weights_compress_and_run_in_tflm_with_outputs_equal_to_the_uncompressed_model(
        clustered: tuple[TFLMCandidate, TFLMCandidate, list[dict[str, np.ndarray]]]) -> None:
    c, small, feeds = clustered
    assert small is not c
    assert len(small.tflite_bytes) < len(c.tflite_bytes)
    assert small.candidate.size_bytes == len(small.tflite_bytes)
    assert "TFLM_DECODE" in _custom_ops(small.tflite_bytes)
    assert "TFLM_DECODE" not in _custom_ops(c.tflite_bytes)
    for before, after in zip(micro.run(c.tflite_bytes, feeds), micro.run(small.tflite_bytes, feeds), strict=True):
        np.testing.assert_array_equal(before, after)
    # The decoded weights live in the arena: RAM grows by about what flash saves.
    assert small.arena_bytes > c.arena_bytes
    assert micro.runs_in(small.tflite_bytes, feeds[0], small.arena_bytes)
    assert small.candidate.config["lut"]["tensors"]


def test_a_package_carries_the_compressed_model_and_its_c_array(
        clustered: tuple[TFLMCandidate, TFLMCandidate, list[dict[str, np.ndarray]]]) -> None:
    c, small, feeds = clustered
    artifact = TFLMTarget().artifact(small, package="digits-lut")
    assert artifact.files[MODEL_FILE] == small.tflite_bytes
    assert c_source.parse_array(artifact.files[c_source.CC_FILE].decode()) == small.tflite_bytes
    assert f"kTensorArenaSize = {small.arena_bytes};" in artifact.files[c_source.H_FILE].decode()
    np.testing.assert_array_equal(TFLMTarget().run(artifact, feeds[:5])[0], micro.run(c.tflite_bytes, feeds[:5])[0])


def test_the_plan_uses_as_few_index_bits_as_the_clusters_need(clustered: tuple[TFLMCandidate, TFLMCandidate, list[dict[str, np.ndarray]]]) -> None:
    c, _, _ = clustered
    plan = compression.lut_plan(c.tflite_bytes)
    assert plan and all(t.bits == 4 for t in plan)
    assert all(t.encoded_bytes < t.raw_bytes for t in plan)
    result = compression.compress_lut(c.tflite_bytes)
    assert result.flash_after < result.flash_before
    assert {t.name for t in result.tensors} == {t.name for t in plan}


def test_weights_that_are_not_clustered_are_left_alone(digits_mlp: model_zoo.ZooModel) -> None:
    c, small, feeds = _tflm(load_model(digits_mlp.onnx_path).model, digits_mlp)
    assert compression.lut_plan(c.tflite_bytes) == []
    assert small is c and compression.compress_candidate(c, feeds) is c


def test_bad_bit_width_is_refused_with_the_range() -> None:
    with pytest.raises(ValueError, match="max_bits must be 1..7"):
        compression.lut_plan(b"", max_bits=8)
