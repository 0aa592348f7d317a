"""Fidelity of LiteRT full-integer int8 (``tflite.quantize(..., "int8")``) on held-out inputs.

The floors hold with margin what was measured (docs/benchmarks.md, "Latency side by side"): they
catch a calibration that clips activations, as ai-edge-quantizer's default moving average of the
per-sample min/max did on the DS-CNN (19.6 dB, 87.5% top-1 agreement).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest

from edgefleet.compiler import calibration, inference, model_zoo
from edgefleet.compiler.tflite import convert
from edgefleet.compiler.tflite.quantize import evaluate, quantize


def _int8_fidelity(model: onnx.ModelProto, calibrate: int = 16, hold_out: int = 32) -> tuple[float, float | None]:
    """SQNR (dB) and top-1 agreement (None for a non-classifier) of the int8 model against the ONNX
    model, calibrated on ``calibrate`` random inputs and measured on ``hold_out`` others."""
    converted = convert(model)
    calib = calibration.synthetic(converted.inputs, count=calibrate, seed=0)
    held_out = list(calibration.synthetic(converted.inputs, count=hold_out, seed=1).feeds())
    reference = inference.run_model(model, held_out)[0]
    q = quantize(converted.tflite_bytes, "int8", calibration=list(calib.feeds()))
    f = evaluate([reference], q.tflite_bytes, held_out, [model.graph.output[0].name])
    assert f.sqnr_db is not None
    return f.sqnr_db, f.top1_agreement


def test_ds_cnn_int8_keeps_its_answers_when_activation_ranges_cover_every_calibration_sample() -> None:
    sqnr, top1 = _int8_fidelity(model_zoo.ds_cnn(0))
    assert sqnr > 28.0  # measured 32.0 dB; 19.6 dB with the moving-average ranges
    assert top1 == 1.0


def test_int8_activation_ranges_are_the_min_and_max_over_all_calibration_samples() -> None:
    """The quantized input's range spans every calibration sample, not a typical one."""
    from ai_edge_litert.interpreter import Interpreter

    model = model_zoo.ds_cnn(0)
    converted = convert(model)
    feeds = list(calibration.synthetic(converted.inputs, count=16, seed=0).feeds())
    q = quantize(converted.tflite_bytes, "int8", calibration=feeds)
    details = Interpreter(model_content=q.tflite_bytes).get_tensor_details()
    (quantized_input,) = [d for d in details if d["name"] == "input/quantized"]
    scale, zero_point = quantized_input["quantization"]
    samples = np.stack([f["input"] for f in feeds])
    assert (-128 - zero_point) * scale == pytest.approx(float(samples.min()), rel=0.01, abs=scale)
    assert (127 - zero_point) * scale == pytest.approx(float(samples.max()), rel=0.01, abs=scale)


def test_a_max_pool_with_explicit_pads_quantizes_to_int8() -> None:
    """ResNet's stem pool (3x3/2, pads 1) becomes PADV2 with the lowest float + MAX_POOL_2D; ai-edge-quantizer takes its fill."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "padded_max_pool", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(8, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sqnr, _ = _int8_fidelity(model)
    assert sqnr > 33.0  # measured 39.1 dB: the padding does not win any window in int8 either


@pytest.mark.parametrize(("build", "floor"), [(model_zoo.mobilenetv2, 27.0), (model_zoo.resnet18, 30.0)])  # measured 31.5, 35.0
def test_full_size_nets_convert_and_quantize_to_a_representative_int8_graph(
    build: Callable[[int], onnx.ModelProto], floor: float,
) -> None:
    """The 224x224 MobileNetV2 and ResNet-18 of the latency benchmark: their random weights keep int8 SQNR sane."""
    sqnr, top1 = _int8_fidelity(build(0), calibrate=8, hold_out=8)
    assert sqnr > floor
    assert top1 == 1.0
