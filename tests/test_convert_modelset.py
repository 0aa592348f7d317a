"""The converter's model set: every model converts and its fp32 TFLite output matches onnxruntime.

The set: the trained digits MLP and CNN, random-weight MobileNetV2-, ResNet- and DS-CNN-style nets,
a small YOLO-style detector (``model_zoo.yolo_detector``), full-size MobileNetV2 and ResNet-18 at
224x224 (random weights), and three real PP-OCR models shipped in
the ``rapidocr-onnxruntime`` wheel. The worst relative error per model (``verify.compare``: max
``|tflite - onnx|`` over max ``|onnx|``) is printed; docs/converter.md records it.

    .venv/bin/pytest tests/test_convert_modelset.py -s -q
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.compiler import model_zoo
from edgefleet.compiler.tflite import convert
from edgefleet.compiler.tflite.verify import compare

TOLERANCE = 1e-4

Case = tuple[onnx.ModelProto, dict[str, list[int]] | None, list[dict[str, np.ndarray]] | None]


def _digits(zoo: model_zoo.ZooModel) -> Case:
    with np.load(zoo.validation_path) as data:
        feeds = [{"input": row[None]} for row in data["input"][:50]]
    return onnx.load(zoo.onnx_path), None, feeds


def document_page(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A white page with dark text-like strokes, normalised as PP-OCR expects: [1, 3, H, W].

    Random noise contains no text, so the detector's probability map stays below 1e-3 and an error
    relative to its maximum would measure nothing; on this page it reaches 1.
    """
    rng = np.random.default_rng(seed)
    page = np.ones((3, height, width), np.float32)
    for row in range(height // 8, height - 24, max(height // 5, 24)):
        x = 8
        while x < width - 32:
            word = int(rng.integers(8, 24))
            for k in range(0, word, 4):
                page[:, row:row + 16, x + k:x + k + 2] = 0.0
            page[:, row + 7:row + 9, x:x + word] = 0.0
            x += word + 10
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
    return ((page - mean) / std)[None].astype(np.float32)


def _rapidocr(name: str) -> Case:
    try:
        path, shape = model_zoo.rapidocr_model(name)
    except FileNotFoundError as exc:  # the `test` extra installs rapidocr-onnxruntime
        pytest.skip(str(exc))
    model = onnx.load(path)
    input_name = model.graph.input[0].name
    feeds = [{input_name: document_page(shape[2], shape[3], seed)} for seed in (0, 1)] if name == "ppocr_det" else None
    return model, {input_name: shape}, feeds


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modelset")


MODELS: dict[str, Callable[[Path], Case]] = {
    "digits_mlp": lambda d: _digits(model_zoo.digits_mlp(d / "mlp")),
    "digits_cnn": lambda d: _digits(model_zoo.digits_cnn(d / "cnn")),
    **{name: (lambda d, build=build: (build(0), None, None)) for name, build in model_zoo.ARCHITECTURES.items()},
    "yolo_detector": lambda d: (model_zoo.yolo_detector(0), None, None),
    "mobilenetv2": lambda d: (model_zoo.mobilenetv2(0), None, None),
    "resnet18": lambda d: (model_zoo.resnet18(0), None, None),
    **{name: (lambda d, name=name: _rapidocr(name)) for name in model_zoo.RAPIDOCR_MODELS},
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_onnxruntime(name: str, zoo_dir: Path) -> None:
    model, input_shapes, feeds = MODELS[name](zoo_dir)
    result = convert(model, input_shapes=input_shapes)
    comparison = compare(model, result.tflite_bytes, result.inputs, samples=3, feeds=feeds)
    worst = comparison.max_rel_error
    print(f"\n{name}: worst relative error {worst:.2e} over {comparison.samples} samples, "
          f"{result.report.operators} operators, inputs {[s.shape for s in result.inputs]}")
    assert worst <= TOLERANCE, (name, comparison.errors)


def test_the_yolo_detector_exercises_folding_and_the_detection_head() -> None:
    model = model_zoo.yolo_detector(0)
    types = {n.op_type for n in model.graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Resize", "Concat", "Transpose", "Sigmoid", "LeakyRelu"} <= types
    result = convert(model)
    assert any("folded" in note for note in result.report.notes)
    assert result.outputs[0].shape == [1, 3 * (8 * 8 + 4 * 4), 5 + model_zoo.YOLO_CLASSES]
    counts = result.report.op_counts
    assert counts["RESIZE_NEAREST_NEIGHBOR"] == 1 and counts["LOGISTIC"] >= 2 and "SHAPE" not in counts


def test_shape_arithmetic_behind_a_folded_reshape_target_folds_too() -> None:
    """A Reshape whose target folds only in the first round; a second Reshape reads the first's Shape."""
    text = """
    <ir_version: 8, opset_import: ["" : 12]>
    g (float[1, 6, 2, 2] x) => (float[1, 2, 12] y) {
        shape = Shape (x)
        starts = Constant <value = int64[1] {0}> ()
        ends = Constant <value = int64[1] {2}> ()
        axes = Constant <value = int64[1] {0}> ()
        batch_channels = Slice (shape, starts, ends, axes)
        rest = Constant <value = int64[1] {-1}> ()
        target = Concat <axis = 0> (batch_channels, rest)
        flat = Reshape (x, target)
        flat_shape = Shape (flat)
        index = Constant <value = int64[1] {2}> ()
        n = Gather <axis = 0> (flat_shape, index)
        three = Constant <value = int64[1] {3}> ()
        m = Mul (n, three)
        head = Constant <value = int64[2] {1, 2}> ()
        target2 = Concat <axis = 0> (head, m)
        folded = Reshape (flat, target2)
        y = Sigmoid (folded)
    }
    """
    model = onnx.parser.parse_model(text)
    result = convert(model)
    assert result.outputs[0].shape == [1, 2, 12]
    assert compare(model, result.tflite_bytes, result.inputs).max_rel_error <= TOLERANCE
