"""Calibration from a folder of images with a declared preprocessing (compiler/calibration.py, ``edgefleet convert`` and ``compile``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler import calibration, model_zoo
from edgefleet.compiler.cli import compile_command, convert_command
from edgefleet.compiler.errors import CalibrationError

SPEC = TensorSpec(name="input", shape=[1, 3, 8, 12], dtype="float32")


def _images(folder: Path, count: int = 3, size: tuple[int, int] = (24, 16)) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = []
    for i in range(count):
        rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"img{i}.png")
        pixels.append(rgb)
    return pixels


def test_text_and_yaml_preprocessing_parse_to_the_same_declaration(tmp_path: Path) -> None:
    text = "color=bgr,resize=12x8,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=nchw"
    (tmp_path / "pre.yaml").write_text(
        "color: bgr\nresize: 12x8\nscale: 1/255\nmean: [0.485, 0.456, 0.406]\nstd: [0.229, 0.224, 0.225]\nlayout: nchw\n")
    parsed = calibration.parse_preprocess(text)
    assert parsed == calibration.parse_preprocess(str(tmp_path / "pre.yaml"))
    assert parsed.resize == (12, 8) and parsed.mean == (0.485, 0.456, 0.406) and parsed.scale == pytest.approx(1 / 255)


def test_images_become_normalised_nchw_samples(tmp_path: Path) -> None:
    pixels = _images(tmp_path / "imgs", size=(12, 8))  # already the model's size: resize is the identity
    data = calibration.load_dataset(tmp_path / "imgs", [SPEC], preprocess="mean=0.5,std=0.25,scale=1/255")
    assert data.arrays["input"].shape == (3, 1, 3, 8, 12) and data.arrays["input"].dtype == np.float32
    expected = ((pixels[1].astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1)
    np.testing.assert_allclose(data.arrays["input"][1, 0], expected, atol=1e-6)
    assert "3 images" in data.source


def test_resize_defaults_to_the_model_input_and_bgr_reverses_channels(tmp_path: Path) -> None:
    _images(tmp_path / "imgs", size=(48, 32))
    rgb = calibration.load_dataset(tmp_path / "imgs", [SPEC], preprocess="color=rgb")
    bgr = calibration.load_dataset(tmp_path / "imgs", [SPEC], preprocess="color=bgr")
    assert rgb.arrays["input"].shape == (3, 1, 3, 8, 12)
    np.testing.assert_array_equal(bgr.arrays["input"][:, :, ::-1], rgb.arrays["input"])


def test_a_preprocess_yaml_in_the_folder_is_used_without_a_flag(tmp_path: Path) -> None:
    _images(tmp_path / "imgs", count=2)
    (tmp_path / "imgs" / calibration.PREPROCESS_FILE).write_text("color: gray\nlayout: nhwc\n")
    spec = TensorSpec(name="x", shape=[1, 8, 12, 1], dtype="float32")
    assert calibration.load_dataset(tmp_path / "imgs", [spec]).arrays["x"].shape == (2, 1, 8, 12, 1)


@pytest.mark.parametrize(("setup", "preprocess", "message"), [
    ("empty", None, "has no images"),
    ("broken", None, "cannot read the image"),
    ("ok", "resize=16x16", "makes each image [1, 3, 16, 16] but input 'input' is [1, 3, 8, 12]"),
    ("ok", "color=gray", "makes each image [1, 1, 8, 12]"),
    ("ok", "mean=0.1,0.2", "mean has 2 values but color=rgb gives 3 channels"),
    ("ok", "size=3", "unknown key 'size'"),
    ("ok", "resize=12by8", "expected WIDTHxHEIGHT"),
    ("ok", "layout=chw", "choose nchw or nhwc"),
])
def test_bad_folders_and_preprocessing_are_clear_errors(tmp_path: Path, setup: str, preprocess: str | None, message: str) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    if setup == "broken":
        _images(folder, count=1)
        (folder / "bad.jpg").write_bytes(b"not a jpeg")
    elif setup == "ok":
        _images(folder, count=1)
    with pytest.raises(CalibrationError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        calibration.load_dataset(folder, [SPEC], preprocess=preprocess)
    if setup == "broken":
        assert "bad.jpg" in str(info.value)


def test_convert_quantizes_int8_calibrated_on_an_image_folder(tmp_path: Path) -> None:
    import onnx

    onnx.save(model_zoo.mobilenetv2_block(0), tmp_path / "m.onnx")
    _images(tmp_path / "imgs", count=8, size=(40, 40))
    result = CliRunner().invoke(convert_command, [
        str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.tflite"), "--quantize", "int8", "--json",
        "--calibration", str(tmp_path / "imgs"), "--preprocess", "resize=32x32,mean=0.485,0.456,0.406,std=0.229,0.224,0.225",
    ])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["quantization"]["calibration_samples"] == 6  # 8 images, a quarter held out
    assert payload["quantization"]["fidelity"]["synthetic"] is False
    assert (tmp_path / "m.tflite").stat().st_size == payload["quantization"]["size_bytes"]

    bad = CliRunner().invoke(convert_command, [
        str(tmp_path / "m.onnx"), "-o", str(tmp_path / "n.tflite"), "--quantize", "int8",
        "--calibration", str(tmp_path / "imgs"), "--preprocess", "resize=64x64"])
    assert bad.exit_code == 1 and "makes each image [1, 3, 64, 64]" in bad.output
    assert not (tmp_path / "n.tflite").exists()


def test_compile_calibrates_on_an_image_folder_with_its_preprocess_yaml(tmp_path: Path,
                                                                        signing_key: tuple[Path, Path]) -> None:
    import onnx

    onnx.save(model_zoo.mobilenetv2_block(0), tmp_path / "m.onnx")
    _images(tmp_path / "imgs", count=8, size=(40, 40))
    (tmp_path / "imgs" / calibration.PREPROCESS_FILE).write_text("resize: 32x32\nscale: 1/255\n")
    result = CliRunner().invoke(compile_command, [
        str(tmp_path / "m.onnx"), "--profile", "raspberry-pi-4", "--calibration", str(tmp_path / "imgs"),
        "--key", str(signing_key[0]), "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    (package,) = json.loads(result.stdout)["packages"]
    assert package["calibration"]["samples"] == 6  # 8 images, a quarter held out
    assert "int8-static" not in package["skipped"]
