"""Sample data for the compiler: calibration for static quantization, held-out inputs for fidelity.

A data file is ``.npy`` (one array, for a single-input model) or ``.npz`` (one array per model
input, keyed by input name; a single array under any key is accepted for a single-input model).
Each array holds samples along axis 0: ``[N, *input_shape]``, or ``[N, *input_shape[1:]]`` when the
model's batch dimension is 1 (so digits of shape ``[N, 64]`` feed an input of shape ``[1, 64]``).
An optional ``labels`` array of N integers lets the report show accuracy next to fidelity.

A folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``) feeds a single-input image model
through a preprocessing the user declares (``Preprocess``: colour order, resize, scale, mean/std,
layout), given as ``resize=224x224,mean=0.485,0.456,0.406,...`` or a YAML file, or found as
``preprocess.yaml`` inside the folder. Pillow decodes the images.

Without data the compiler still runs: fidelity is then measured on random inputs (flagged
``synthetic`` everywhere it is reported), and static quantization, which needs real activation
ranges, is skipped.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.package import TensorSpec
from edgefleet.compiler.errors import CalibrationError
from edgefleet.compiler.inference import Feed

log = logging.getLogger(__name__)

LABELS = "labels"
SYNTHETIC_SAMPLES = 64
"""How many random samples stand in for missing data: enough for stable cosine and SQNR figures."""


@dataclass(frozen=True)
class Dataset:
    """Samples for a model: ``arrays[name]`` has shape ``[N, *spec.shape]`` for each input spec."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def feeds(self) -> Iterator[Feed]:
        """One feed per sample, each array in its input's exact shape."""
        for i in range(len(self)):
            yield {name: arr[i] for name, arr in self.arrays.items()}

    def take(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            arrays={k: v[idx] for k, v in self.arrays.items()},
            labels=None if self.labels is None else self.labels[idx],
            synthetic=self.synthetic,
            source=self.source,
        )

    def describe(self) -> dict[str, object]:
        """What the report says about this data."""
        return {"samples": len(self), "synthetic": self.synthetic, "source": self.source, "labels": self.labels is not None}


def load_dataset(path: Path | str, specs: Sequence[TensorSpec], *, preprocess: Preprocess | str | None = None) -> Dataset:
    """Read ``path`` and check it against the model's input ``specs``; CalibrationError says what does not fit.

    ``path`` is a numpy file, or a folder of images preprocessed by ``preprocess`` (a ``Preprocess``,
    its text form, or a YAML path; default: ``preprocess.yaml`` in the folder, else ``Preprocess()``).
    """
    path = Path(path)
    where = str(path)
    if path.is_dir():
        return load_images(path, specs, preprocess)
    if not path.is_file():
        raise CalibrationError("no such data file or image folder", path=where)
    try:
        if path.suffix == ".npy":
            raw = {"": np.load(path, allow_pickle=False)}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        else:
            raise CalibrationError(
                "unknown data format; save samples with numpy as .npz (one array per input name) or .npy, "
                "or pass a folder of images", path=where)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"not a readable numpy file ({exc}); write it with np.savez or np.save", path=where) from None
    labels = raw.pop(LABELS, None)
    arrays = _match_inputs(raw, specs, where=where)
    n = {len(a) for a in arrays.values()}
    if len(n) != 1:
        counts = {k: len(a) for k, a in arrays.items()}
        raise CalibrationError(f"inputs have different sample counts {counts}; every array needs the same N along axis 0", path=where)
    count = n.pop()
    if count == 0:
        raise CalibrationError("the data holds no samples", path=where)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (count,) or labels.dtype.kind not in "iu":
            raise CalibrationError(
                f"'labels' must be {count} integers (one class index per sample), got shape {list(labels.shape)} {labels.dtype}",
                path=where,
            )
    return Dataset(arrays=arrays, labels=labels, source=where)


def _match_inputs(raw: dict[str, np.ndarray], specs: Sequence[TensorSpec], *, where: str) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    if len(specs) == 1 and names[0] not in raw and len(raw) == 1:
        # A single unnamed array (np.save, or np.savez(path, x)) feeds a single-input model.
        raw = {names[0]: next(iter(raw.values()))}
    missing = [n for n in names if n not in raw]
    if missing:
        found = [k or "<.npy array>" for k in raw]
        raise CalibrationError(
            f"the model's inputs are {names} but the file has arrays {found}; "
            f"save them by input name, e.g. np.savez(path, **{{{names[0]!r}: samples}})",
            path=where,
        )
    extra = sorted(set(raw) - set(names))
    if extra:
        log.warning("%s: ignoring arrays %s: they match no model input (inputs: %s)", where, extra, names)
    return {s.name: _conform(raw[s.name], s, where=where) for s in specs}


def _conform(arr: np.ndarray, spec: TensorSpec, *, where: str) -> np.ndarray:
    shape = tuple(spec.shape)
    if arr.shape[1:] == shape:
        samples = arr
    elif shape and shape[0] == 1 and arr.shape[1:] == shape[1:]:
        samples = arr.reshape((len(arr), *shape))
    else:
        accepted = f"[N, {', '.join(map(str, shape))}]"
        if shape and shape[0] == 1:
            accepted += f" or [N, {', '.join(map(str, shape[1:]))}]"
        raise CalibrationError(
            f"array {spec.name!r} has shape {list(arr.shape)} but input {spec.name!r} is {list(shape)}; "
            f"expected samples along axis 0: {accepted}",
            path=where,
        )
    want = np.dtype(spec.dtype)
    if samples.dtype != want:
        # float64 samples for a float32 input are common (numpy's default) and safe to narrow; ints for floats are not.
        if samples.dtype.kind != want.kind and not (samples.dtype.kind in "iu" and want.kind in "iu"):
            raise CalibrationError(
                f"array {spec.name!r} has dtype {samples.dtype} but input {spec.name!r} takes {want}; convert it with .astype({want.name!r})",
                path=where,
            )
        samples = samples.astype(want)
    return np.ascontiguousarray(samples)


def split(data: Dataset, *, holdout: float = 0.25, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split into (calibration, held-out evaluation) samples, deterministically.

    Fidelity measured on the calibration samples themselves would flatter static quantization
    (its ranges were fitted to exactly those activations), hence the held-out part.
    """
    n = len(data)
    if n < 2:
        raise CalibrationError(
            f"{n} sample is too few to both calibrate and evaluate; provide at least 2 (a few hundred is better)",
            path=data.source,
        )
    n_eval = min(n - 1, max(1, round(n * holdout)))
    order = np.random.default_rng(seed).permutation(n)
    return data.take(np.sort(order[n_eval:])), data.take(np.sort(order[:n_eval]))


def synthetic(specs: Sequence[TensorSpec], *, count: int = SYNTHETIC_SAMPLES, seed: int = 0) -> Dataset:
    """Random inputs for when no data was given: standard normal floats, small non-negative integers.

    Integers stay in [0, 10) because integer inputs are usually indices (tokens, classes) and a
    random large index would make the model fail rather than measure it.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for s in specs:
        dtype = np.dtype(s.dtype)
        shape = (count, *s.shape)
        if dtype.kind == "f":
            arrays[s.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            arrays[s.name] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[s.name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            raise CalibrationError(f"cannot make random samples for input {s.name!r} of dtype {dtype}; pass --calibration data")
    return Dataset(arrays=arrays, synthetic=True, source=f"random (seed {seed})")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
PREPROCESS_FILE = "preprocess.yaml"
"""Read from an image folder when no preprocessing is given, so ``edgefleet compile --calibration DIR`` works too."""
_COLORS = {"rgb": "RGB", "bgr": "RGB", "gray": "L"}
_LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes one input sample, in this order:

    1. decode and convert to ``color`` (``rgb``, ``bgr`` as OpenCV-trained models expect, or ``gray``);
    2. resize to ``resize`` = (width, height), bilinear; ``None`` takes the model input's own size;
    3. ``pixel * scale``, then ``(value - mean[c]) / std[c]`` per channel (one value applies to every channel);
    4. arrange as ``layout`` (``nchw`` or ``nhwc``) and match the model input, batch dimension 1 included.
    """

    resize: tuple[int, int] | None = None
    color: str = "rgb"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "nchw"
    source: str = field(default="defaults", compare=False)

    def __post_init__(self) -> None:
        if self.color not in _COLORS:
            raise CalibrationError(f"preprocess color={self.color!r}: choose one of {', '.join(_COLORS)}", path=self.source)
        if self.layout not in _LAYOUTS:
            raise CalibrationError(f"preprocess layout={self.layout!r}: choose nchw or nhwc", path=self.source)
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) <= 0):
            raise CalibrationError(f"preprocess resize={self.resize}: expected WIDTHxHEIGHT, e.g. 224x224", path=self.source)
        if any(s == 0 for s in self.std):
            raise CalibrationError("preprocess std has a zero; every std value must be non-zero", path=self.source)
        if not self.mean or not self.std:
            raise CalibrationError("preprocess mean and std need at least one value each", path=self.source)

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    def describe(self) -> str:
        size = "model input size" if self.resize is None else f"{self.resize[0]}x{self.resize[1]}"
        mean = ",".join(f"{v:g}" for v in self.mean)
        std = ",".join(f"{v:g}" for v in self.std)
        return f"color={self.color},resize={size},scale={self.scale:.6g},mean={mean},std={std},layout={self.layout}"


_KEYS = ("resize", "color", "scale", "mean", "std", "layout")


def parse_preprocess(text: str) -> Preprocess:
    """A ``Preprocess`` from ``key=value`` text or from a YAML file (a path ending in .yaml/.yml).

    Text: comma-separated ``key=value``; ``mean`` and ``std`` take several comma-separated values,
    ``scale`` a number or a fraction such as ``1/255``, ``resize`` ``WIDTHxHEIGHT``. For example
    ``color=rgb,resize=224x224,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=nchw``.
    YAML: a mapping with the same keys; ``mean``/``std`` as lists.
    """
    if text.endswith((".yaml", ".yml")):
        return _preprocess_from_yaml(Path(text))
    values: dict[str, list[str]] = {}
    key = ""
    for token in (t.strip() for t in text.split(",")):
        if "=" in token:
            key, _, first = token.partition("=")
            key = key.strip()
            if key not in _KEYS:
                raise CalibrationError(f"--preprocess: unknown key {key!r} in {text!r}; keys are {', '.join(_KEYS)}")
            if key in values:
                raise CalibrationError(f"--preprocess: {key!r} is given twice in {text!r}")
            values[key] = [first.strip()]
        elif key in ("mean", "std") and token:
            values[key].append(token)
        else:
            raise CalibrationError(
                f"--preprocess: cannot read {token!r} in {text!r}; write key=value pairs separated by commas, "
                "e.g. resize=224x224,mean=0.485,0.456,0.406,std=0.229,0.224,0.225"
            )
    return _preprocess_from_mapping(values, source="--preprocess")


def _preprocess_from_yaml(path: Path) -> Preprocess:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CalibrationError(f"cannot read the preprocessing file: {exc.strerror}", path=str(path)) from None
    except yaml.YAMLError as exc:
        raise CalibrationError(f"not valid YAML: {exc}", path=str(path)) from None
    if not isinstance(raw, dict):
        raise CalibrationError(f"expected a mapping with keys {', '.join(_KEYS)}", path=str(path))
    unknown = sorted(set(map(str, raw)) - set(_KEYS))
    if unknown:
        raise CalibrationError(f"unknown keys {unknown}; keys are {', '.join(_KEYS)}", path=str(path))
    values = {k: [str(x) for x in (v if isinstance(v, list) else [v])] for k, v in raw.items()}
    return _preprocess_from_mapping(values, source=str(path))


def _preprocess_from_mapping(values: dict[str, list[str]], *, source: str) -> Preprocess:
    def number(key: str, text: str) -> float:
        try:
            return float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise CalibrationError(f"preprocess {key}: {text!r} is not a number", path=source) from None

    def single(key: str) -> str:
        if len(values[key]) != 1:
            raise CalibrationError(f"preprocess {key} takes one value, got {values[key]}", path=source)
        return values[key][0]

    kwargs: dict[str, Any] = {"source": source}
    if "resize" in values:
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", single("resize"))
        if not match:
            raise CalibrationError(f"preprocess resize={single('resize')!r}: expected WIDTHxHEIGHT, e.g. 224x224", path=source)
        kwargs["resize"] = (int(match[1]), int(match[2]))
    for key in ("color", "layout"):
        if key in values:
            kwargs[key] = single(key).lower()
    if "scale" in values:
        kwargs["scale"] = number("scale", single("scale"))
    for key in ("mean", "std"):
        if key in values:
            kwargs[key] = tuple(number(key, v) for v in values[key])
    return Preprocess(**kwargs)


def _resolve_preprocess(folder: Path, preprocess: Preprocess | str | None) -> Preprocess:
    if isinstance(preprocess, Preprocess):
        return preprocess
    if preprocess:
        return parse_preprocess(preprocess)
    declared = folder / PREPROCESS_FILE
    return _preprocess_from_yaml(declared) if declared.is_file() else Preprocess()


def load_images(folder: Path | str, specs: Sequence[TensorSpec], preprocess: Preprocess | str | None = None) -> Dataset:
    """Every image in ``folder`` (and its subfolders, sorted by path), preprocessed into samples for the model's single input."""
    folder = Path(folder)
    where = str(folder)
    pre = _resolve_preprocess(folder, preprocess)
    if len(specs) != 1:
        raise CalibrationError(
            f"an image folder feeds a model with one input; this one has {[s.name for s in specs]}: "
            "save the samples with np.savez(path, **{name: samples, ...}) instead", path=where)
    spec = specs[0]
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise CalibrationError(f"the folder has no images ({', '.join(IMAGE_SUFFIXES)})", path=where)
    size = pre.resize or _spatial_size(spec, pre, where=where)
    samples = np.stack([_preprocess_image(p, pre, size) for p in paths])
    arrays = {spec.name: _conform_images(samples, spec, pre, where=where)}
    log.info("%s: %d images, preprocessing %s", where, len(paths), pre.describe())
    return Dataset(arrays=arrays, source=f"{where} ({len(paths)} images; {pre.describe()})")


def _spatial_size(spec: TensorSpec, pre: Preprocess, *, where: str) -> tuple[int, int]:
    """(width, height) of the model input in ``pre.layout``; the resize when none is declared."""
    shape = list(spec.shape)
    if len(shape) not in (3, 4):
        raise CalibrationError(
            f"input {spec.name!r} is {shape}, not an image ([1, C, H, W] or [1, H, W, C]); pass .npz samples instead", path=where)
    h, w = shape[-2:] if pre.layout == "nchw" else shape[-3:-1]
    return int(w), int(h)


def _preprocess_image(path: Path, pre: Preprocess, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = image.convert(_COLORS[pre.color]).resize(size, Image.Resampling.BILINEAR)
            array = np.asarray(pixels, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read the image ({exc}); remove it or convert it to PNG/JPEG", path=str(path)) from None
    if array.ndim == 2:
        array = array[:, :, None]
    if pre.color == "bgr":
        array = array[:, :, ::-1]
    channels = array.shape[-1]
    for name, values in (("mean", pre.mean), ("std", pre.std)):
        if len(values) not in (1, channels):
            raise CalibrationError(
                f"preprocess {name} has {len(values)} values but color={pre.color} gives {channels} channels", path=pre.source)
    array = (array * pre.scale - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return array.transpose(2, 0, 1) if pre.layout == "nchw" else array


def _conform_images(samples: np.ndarray, spec: TensorSpec, pre: Preprocess, *, where: str) -> np.ndarray:
    shape = tuple(spec.shape)
    per_image = samples.shape[1:]
    if per_image == shape or (shape and shape[0] == 1 and per_image == shape[1:]):
        return np.ascontiguousarray(samples.reshape((len(samples), *shape)).astype(np.dtype(spec.dtype)))
    raise CalibrationError(
        f"preprocessing ({pre.describe()}) makes each image {[1, *per_image]} but input {spec.name!r} is {list(shape)}; "
        "fix resize (WIDTHxHEIGHT), color (rgb/bgr: 3 channels, gray: 1) or layout (nchw/nhwc) to match the model",
        path=where,
    )
