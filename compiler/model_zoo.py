"""Small trained models for the demo, the end-to-end tests and benchmarks, made by code, not checked in.

``digits_mlp`` trains scikit-learn's ``MLPClassifier`` on the 8x8 digits bundled with scikit-learn
(no download) and writes it as ONNX by hand with ``onnx.helper``: MatMul, Add, Relu, MatMul, Add,
Softmax, opset 17, input ``input`` float32 ``[1, 64]`` (pixels scaled to [0, 1]) and output
``probabilities`` float32 ``[1, 10]``. The batch is a static 1 because devices classify one sample
at a time. MatMul+Add rather than Gemm: onnxruntime's per-channel QDQ quantization of Gemm stores
more metadata, and the int8 model came out 26.4 KB instead of 23.7 KB (2.9x instead of 3.3x smaller).

``digits_cnn`` is a small CNN on the same digits, trained with plain numpy (Adam, im2col, a fixed
seed, a few seconds; no torch): input ``input`` float32 ``[1, 1, 8, 8]``, Conv 3x3 (8) + Relu +
MaxPool 2 + Conv 3x3 (16) + Relu + Flatten + Gemm (10) + Softmax, output ``probabilities``.

``digits_mobilenet`` is a MobileNetV1-style net (3x3 stem, four depthwise-separable blocks, global
average pool, dense) trained with PyTorch (the ``train`` extra) on the digits upsampled to 32x32,
BatchNorm folded into the convolutions: the compression benchmarks' conv net big enough to time.

``ARCHITECTURES`` holds random-weight graphs built with ``onnx.helper`` for converter tests, where
only the structure matters: a MobileNetV2-style net (depthwise conv, BatchNormalization, Relu6,
residual Add), a ResNet-style net (basic blocks, a strided 1x1 shortcut) and a DS-CNN keyword
spotter (asymmetric-padded strided stem on 49x10 MFCCs, depthwise-separable blocks, average pool).
``yolo_detector`` is a random-weight YOLOv5-style detector (SiLU, Resize + Concat neck, box
decoding, exporter-style shape arithmetic), ``mobilenetv2`` and ``resnet18`` are the full-size
ImageNet nets at 224x224 (random weights, no BatchNormalization, 1000 logits) for latency at
deployed widths, and ``rapidocr_model`` finds the real PP-OCR models
that the ``rapidocr-onnxruntime`` wheel ships; together they are the converter's model set
(tests/test_convert_modelset.py).

Results are cached in the work directory: a stamp file records the recipe (hyperparameters and the
scikit-learn version) and the SHA-256 of each file, so a second call with the same recipe and
untouched files returns at once, and anything else retrains (about two seconds).

    python -m edgefleet.compiler.model_zoo OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    from sklearn.neural_network import MLPClassifier

log = logging.getLogger(__name__)

OPSET = 17
IR_VERSION = 8
"""IR 8 with opset 17: what onnxruntime 1.13 and later load, so older device runtimes take it too."""


@dataclass(frozen=True)
class ZooModel:
    name: str
    onnx_path: Path
    calibration_path: Path
    """``.npz`` keyed by input name: training samples for static quantization."""
    validation_path: Path
    """``.npz`` with the held-out inputs (keyed by input name) and their ``labels``."""
    accuracy: float
    """Held-out accuracy of the ONNX model under onnxruntime (equal to scikit-learn's)."""


@dataclass(frozen=True)
class DigitsRecipe:
    hidden: int = 256
    """256 rather than 64: with fewer weights the int8 model's fixed overhead (scales, zero points,
    QDQ nodes) would keep it under 3x smaller than fp32."""
    random_state: int = 0
    max_iter: int = 400
    test_size: float = 0.25
    calibration_samples: int = 200
    version: int = 1

    def key(self) -> str:
        import sklearn

        text = json.dumps({**self.__dict__, "sklearn": sklearn.__version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def digits_mlp(workdir: Path | str, recipe: DigitsRecipe = DigitsRecipe()) -> ZooModel:
    """The digits MLP in ``workdir`` (created if needed), trained only if the cache does not match."""
    return _trained(workdir, "digits_mlp", recipe.key(), lambda paths: _train_and_write(recipe, paths),
                    data_prefix="digits")


def _trained(workdir: Path | str, name: str, key: str, train: Callable[[dict[str, Path]], float],
             *, data_prefix: str | None = None) -> ZooModel:
    """The model ``name`` in ``workdir`` (created if needed); ``train`` writes it only if the cache does not match."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = data_prefix or name
    paths = {
        "onnx": workdir / f"{name}.onnx",
        "calibration": workdir / f"{prefix}_calibration.npz",
        "validation": workdir / f"{prefix}_validation.npz",
    }
    stamp = workdir / f"{name}.stamp.json"
    accuracy = _cached(stamp, paths, key)
    if accuracy is None:
        accuracy = train(paths)
        stamp.write_text(
            json.dumps({"recipe": key, "accuracy": accuracy, "sha256": {k: _sha256(p) for k, p in paths.items()}}, indent=2)
        )
    return ZooModel(name=name, onnx_path=paths["onnx"], calibration_path=paths["calibration"],
                    validation_path=paths["validation"], accuracy=accuracy)


def _cached(stamp: Path, paths: dict[str, Path], key: str) -> float | None:
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("recipe") != key:
        return None
    for label, path in paths.items():
        if not path.is_file() or _sha256(path) != recorded.get("sha256", {}).get(label):
            log.info("%s changed or is missing; retraining", path)
            return None
    return float(recorded["accuracy"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train_and_write(recipe: DigitsRecipe, paths: dict[str, Path]) -> float:
    from sklearn.neural_network import MLPClassifier

    x_train, x_test, y_train, y_test = _digits_split(recipe.test_size, recipe.random_state)
    clf = MLPClassifier(hidden_layer_sizes=(recipe.hidden,), random_state=recipe.random_state, max_iter=recipe.max_iter)
    clf.fit(x_train, y_train)
    return _write_mlp(clf, "digits_mlp", f"digits MLP (hidden {recipe.hidden})", x_train, x_test, y_test,
                      random_state=recipe.random_state, calibration_samples=recipe.calibration_samples, paths=paths)


def _digits_split(test_size: float, random_state: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits scaled to 0..1, split stratified: x_train, x_test, y_train, y_test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel values are 0..16
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=random_state, stratify=y)
    return x_train, x_test, y_train, y_test


def _write_mlp(clf: MLPClassifier, name: str, what: str, x_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
               random_state: int, calibration_samples: int, paths: dict[str, Path]) -> float:
    """Write a fitted MLPClassifier as ONNX with its calibration and validation data; its held-out accuracy.

    The ONNX graph must predict what scikit-learn predicts on every held-out digit, or nothing is written.
    """
    from edgefleet.compiler import inference

    model = mlp_to_onnx(clf.coefs_, clf.intercepts_, name=name)
    outputs = inference.run_model(model, [{"input": row[None, :]} for row in x_test])[0]
    onnx_pred = outputs.reshape(len(x_test), -1).argmax(axis=1)
    sk_pred = clf.predict(x_test)
    if not np.array_equal(onnx_pred, sk_pred):
        raise RuntimeError(
            f"the ONNX graph disagrees with scikit-learn on {int(np.sum(onnx_pred != sk_pred))} of {len(x_test)} "
            "held-out digits: mlp_to_onnx does not compute what MLPClassifier computes"
        )
    accuracy = float(np.mean(onnx_pred == y_test))
    log.info("%s: held-out accuracy %.4f", what, accuracy)

    rng = np.random.default_rng(random_state)
    calib = x_train[rng.permutation(len(x_train))[:calibration_samples]]
    onnx.save(model, paths["onnx"])
    np.savez(paths["calibration"], input=calib)
    np.savez(paths["validation"], input=x_test, labels=y_test.astype(np.int64))
    return accuracy


def mlp_to_onnx(coefs: list[np.ndarray], intercepts: list[np.ndarray], *, name: str = "digits_mlp") -> onnx.ModelProto:
    """An MLP with ReLU hidden layers and a softmax output as ONNX (batch 1), from weight matrices and biases."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "input"
    for i, (w, b) in enumerate(zip(coefs, intercepts, strict=True)):
        last = i == len(coefs) - 1
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{i}"), numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"]), helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"])]
        if last:
            nodes.append(helper.make_node("Softmax", [f"z{i}"], ["probabilities"], axis=-1))
        else:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
            x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, coefs[0].shape[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, coefs[-1].shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefleet.model_zoo")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass(frozen=True)
class CnnRecipe:
    conv1: int = 8
    conv2: int = 16
    epochs: int = 12
    batch: int = 32
    learning_rate: float = 0.01
    random_state: int = 0
    test_size: float = 0.25
    calibration_samples: int = 200
    version: int = 1

    def key(self) -> str:
        import sklearn

        text = json.dumps({**self.__dict__, "kind": "cnn", "sklearn": sklearn.__version__, "numpy": np.__version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def digits_cnn(workdir: Path | str, recipe: CnnRecipe = CnnRecipe()) -> ZooModel:
    """The digits CNN in ``workdir`` (created if needed), trained with numpy only if the cache does not match."""
    return _trained(workdir, "digits_cnn", recipe.key(), lambda paths: _train_cnn_and_write(recipe, paths))


def _im2col(x: np.ndarray) -> np.ndarray:
    """[B, C, H, W] -> [B*H*W, C*9]: 3x3 windows with padding 1, columns ordered (c, kh, kw) like ONNX weights."""
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=2)  # [B, C, 9, H, W]
    return cols.transpose(0, 3, 4, 1, 2).reshape(b * h * w, c * 9)


def _col2im(cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    b, c, h, w = shape
    grad = cols.reshape(b, h, w, c, 9).transpose(0, 3, 4, 1, 2)  # [B, C, 9, H, W]
    xp = np.zeros((b, c, h + 2, w + 2), cols.dtype)
    for k in range(9):
        i, j = divmod(k, 3)
        xp[:, :, i : i + h, j : j + w] += grad[:, :, k]
    return xp[:, :, 1:-1, 1:-1]


class _NumpyCnn:
    """Conv3x3-Relu-MaxPool2-Conv3x3-Relu-Flatten-Dense, forward and backward, weights in ONNX layouts."""

    def __init__(self, recipe: CnnRecipe, rng: np.random.Generator) -> None:
        c1, c2 = recipe.conv1, recipe.conv2
        self.params = {
            "W1": rng.standard_normal((c1, 1, 3, 3)) * np.sqrt(2 / 9),
            "b1": np.zeros(c1),
            "W2": rng.standard_normal((c2, c1, 3, 3)) * np.sqrt(2 / (9 * c1)),
            "b2": np.zeros(c2),
            "W3": rng.standard_normal((c2 * 16, 10)) * np.sqrt(1 / (c2 * 16)),
            "b3": np.zeros(10),
        }

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        p = self.params
        b = x.shape[0]
        cols1 = _im2col(x)
        z1 = (cols1 @ p["W1"].reshape(len(p["b1"]), -1).T + p["b1"]).reshape(b, 8, 8, -1).transpose(0, 3, 1, 2)
        a1 = np.maximum(z1, 0)
        windows = a1.reshape(b, a1.shape[1], 4, 2, 4, 2)
        pooled = windows.max(axis=(3, 5))
        cols2 = _im2col(pooled)
        z2 = (cols2 @ p["W2"].reshape(len(p["b2"]), -1).T + p["b2"]).reshape(b, 4, 4, -1).transpose(0, 3, 1, 2)
        a2 = np.maximum(z2, 0)
        flat = a2.reshape(b, -1)
        logits = flat @ p["W3"] + p["b3"]
        cache = {"cols1": cols1, "z1": z1, "a1": a1, "pooled": pooled, "cols2": cols2, "z2": z2, "flat": flat}
        return logits, cache

    def backward(self, dlogits: np.ndarray, cache: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = self.params
        b = dlogits.shape[0]
        grads = {"W3": cache["flat"].T @ dlogits, "b3": dlogits.sum(0)}
        dz2 = (dlogits @ p["W3"].T).reshape(cache["z2"].shape) * (cache["z2"] > 0)
        dz2_rows = dz2.transpose(0, 2, 3, 1).reshape(b * 16, -1)
        grads["W2"] = (dz2_rows.T @ cache["cols2"]).reshape(p["W2"].shape)
        grads["b2"] = dz2_rows.sum(0)
        dpooled = _col2im(dz2_rows @ p["W2"].reshape(len(p["b2"]), -1), cache["pooled"].shape)
        a1 = cache["a1"]
        windows = a1.reshape(b, a1.shape[1], 4, 2, 4, 2)
        mask = windows == cache["pooled"][:, :, :, None, :, None]
        da1 = (mask * dpooled[:, :, :, None, :, None]).reshape(a1.shape)
        dz1 = da1 * (cache["z1"] > 0)
        dz1_rows = dz1.transpose(0, 2, 3, 1).reshape(b * 64, -1)
        grads["W1"] = (dz1_rows.T @ cache["cols1"]).reshape(p["W1"].shape)
        grads["b1"] = dz1_rows.sum(0)
        return grads


def _train_cnn_and_write(recipe: CnnRecipe, paths: dict[str, Path]) -> float:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from edgefleet.compiler import inference

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=recipe.test_size, random_state=recipe.random_state, stratify=y
    )
    rng = np.random.default_rng(recipe.random_state)
    net = _NumpyCnn(recipe, rng)
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in net.params.items()}
    step = 0
    for _ in range(recipe.epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), recipe.batch):
            idx = order[start : start + recipe.batch]
            logits, cache = net.forward(x_train[idx])
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            probs[np.arange(len(idx)), y_train[idx]] -= 1
            grads = net.backward(probs / len(idx), cache)
            step += 1
            for k, g in grads.items():  # Adam
                m, v = moments[k]
                m[:] = 0.9 * m + 0.1 * g
                v[:] = 0.999 * v + 0.001 * g * g
                m_hat, v_hat = m / (1 - 0.9**step), v / (1 - 0.999**step)
                net.params[k] -= recipe.learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)

    model = cnn_to_onnx(net.params)
    x_test32 = x_test.astype(np.float32)
    outputs = inference.run_model(model, [{"input": row[None]} for row in x_test32])[0]
    onnx_pred = outputs.reshape(len(x_test), -1).argmax(axis=1)
    numpy_pred = net.forward(x_test)[0].argmax(axis=1)
    if np.mean(onnx_pred == numpy_pred) < 0.99:
        raise RuntimeError("the ONNX digits CNN disagrees with the numpy network it was made from: cnn_to_onnx is wrong")
    accuracy = float(np.mean(onnx_pred == y_test))
    log.info("digits CNN: held-out accuracy %.4f", accuracy)
    calib = x_train[rng.permutation(len(x_train))[: recipe.calibration_samples]].astype(np.float32)
    onnx.save(model, paths["onnx"])
    np.savez(paths["calibration"], input=calib)
    np.savez(paths["validation"], input=x_test32, labels=y_test.astype(np.int64))
    return accuracy


def cnn_to_onnx(params: dict[str, np.ndarray], *, name: str = "digits_cnn") -> onnx.ModelProto:
    """The digits CNN as ONNX (batch 1) from its weights (``W1``, ``b1`` ... ``b3``; ``W3`` is ``[in, out]``)."""
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in params.items() if k != "W3"]
    inits.append(numpy_helper.from_array(np.asarray(params["W3"], np.float32).T.copy(), "W3"))
    nodes = [
        helper.make_node("Conv", ["input", "W1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "W2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "W3", "b3"], ["logits"], name="dense", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefleet.model_zoo")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


class _GraphMaker:
    """Appends layers with random weights to an ONNX graph under construction (architecture tests only)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def const(self, kind: str, value: np.ndarray) -> str:
        name = self._name(kind)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        name = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int | tuple[int, int], *, stride: int = 1, group: int = 1,
             pads: list[int] | None = None, bias: bool = False) -> str:
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.rng.standard_normal((cout, cin // group, kh, kw)) * np.sqrt(2 / (kh * kw * cin // group))
        inputs = [x, self.const("w", w)] + ([self.const("b", self.rng.standard_normal(cout) * 0.1)] if bias else [])
        pads = pads if pads is not None else [kh // 2, kw // 2, kh // 2, kw // 2]
        return self.node("Conv", inputs, kernel_shape=[kh, kw], strides=[stride, stride], group=group, pads=pads)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        params = [1 + 0.1 * r.standard_normal(c), 0.1 * r.standard_normal(c), 0.1 * r.standard_normal(c), r.uniform(0.5, 1.5, c)]
        return self.node("BatchNormalization", [x, *(self.const("bn", p) for p in params)], epsilon=1e-5)

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, self.const("min", np.array(0.0)), self.const("max", np.array(6.0))])

    def head(self, x: str, c: int, classes: int, *, pool: str = "GlobalAveragePool", **pool_attrs: object) -> str:
        pooled = self.node(pool, [x], **pool_attrs)
        flat = self.node("Flatten", [pooled])
        w = self.rng.standard_normal((classes, c)) * np.sqrt(1 / c)
        logits = self.node("Gemm", [flat, self.const("fc", w), self.const("fcb", self.rng.standard_normal(classes) * 0.1)], transB=1)
        return logits

    def model(self, name: str, input_shape: list[int], out: str, out_shape: list[int]) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Softmax", [out], ["probabilities"], name="softmax", axis=-1))
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, out_shape)],
            self.inits,
        )
        return _finish(graph)


def mobilenetv2_block(seed: int = 0, size: int = 32, width: int = 16) -> onnx.ModelProto:
    """A MobileNetV2-style net on [1, 3, size, size]: stem, an inverted residual (expand, depthwise, project, Add), a strided one, head.

    ``size`` (a multiple of 4) only changes the compute, not the weights: benchmarks use 96 or more
    so that convolutions, not per-operator overhead, dominate the latency. ``width`` (even) is the
    stem's channel count; the strided block widens it 1.5x."""
    g = _GraphMaker(seed)
    wide = 3 * width // 2
    x = g.relu6(g.bn(g.conv("input", 3, width, 3, stride=2), width))  # width x size/2 x size/2
    for cin, cout, stride in ((width, width, 1), (width, wide, 2)):
        hidden = cin * 4
        h = g.relu6(g.bn(g.conv(x, cin, hidden, 1), hidden))
        h = g.relu6(g.bn(g.conv(h, hidden, hidden, 3, stride=stride, group=hidden), hidden))
        h = g.bn(g.conv(h, hidden, cout, 1), cout)
        x = g.node("Add", [x, h]) if stride == 1 and cin == cout else h
    return g.model("mobilenetv2_block", [1, 3, size, size], g.head(x, wide, 10), [1, 10])


def resnet_block(seed: int = 0, size: int = 32, width: int = 16) -> onnx.ModelProto:
    """A ResNet-style net on [1, 3, size, size] (``size`` even): stem, a basic block, a strided block with a 1x1 shortcut, head.

    ``width`` is the stem's channel count (16; ResNet-18's first stage has 64); the strided block doubles it."""
    g = _GraphMaker(seed)
    x = g.node("Relu", [g.bn(g.conv("input", 3, width, 3), width)])
    for cin, cout, stride in ((width, width, 1), (width, 2 * width, 2)):
        h = g.node("Relu", [g.bn(g.conv(x, cin, cout, 3, stride=stride), cout)])
        h = g.bn(g.conv(h, cout, cout, 3), cout)
        shortcut = x if stride == 1 else g.bn(g.conv(x, cin, cout, 1, stride=stride, pads=[0, 0, 0, 0]), cout)
        x = g.node("Relu", [g.node("Add", [h, shortcut])])
    return g.model("resnet_block", [1, 3, size, size], g.head(x, 2 * width, 10), [1, 10])


def ds_cnn(seed: int = 0) -> onnx.ModelProto:
    """A DS-CNN keyword spotter on [1, 1, 49, 10] MFCCs: 10x4 strided stem, 4 depthwise-separable blocks, average pool, 12 classes."""
    g = _GraphMaker(seed)
    # PyTorch-style symmetric padding (5, 1): not TensorFlow's SAME split, so the converter pads explicitly.
    x = g.node("Relu", [g.bn(g.conv("input", 1, 64, (10, 4), stride=2, pads=[5, 1, 5, 1]), 64)])  # 64x25x5
    for _ in range(4):
        x = g.node("Relu", [g.bn(g.conv(x, 64, 64, 3, group=64), 64)])
        x = g.node("Relu", [g.bn(g.conv(x, 64, 64, 1, pads=[0, 0, 0, 0]), 64)])
    return g.model("ds_cnn", [1, 1, 49, 10], g.head(x, 64, 12, pool="AveragePool", kernel_shape=[25, 5]), [1, 12])


MOBILENETV2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
"""MobileNetV2's inverted-residual stages (Sandler et al., 2018, table 2): (expansion, output channels, repeats, first stride)."""


def _he_conv(g: _GraphMaker, x: str, cin: int, cout: int, k: int, *, stride: int = 1, group: int = 1,
             gain: float = 1.0, bias: bool = True) -> str:
    """A Conv with He-scaled random weights times ``gain`` and a small random bias, for nets without BatchNormalization.

    With no BatchNormalization to re-centre them, only the weights' scale keeps activations near unit
    scale through 50 layers: He init for a Conv + ReLU, ``gain`` below 1 for a linear branch that an
    Add sums with the shortcut. Exploding or vanishing activations would make an int8 graph of the net
    unrepresentative (its SQNR meaningless)."""
    w = g.rng.standard_normal((cout, cin // group, k, k)) * gain * np.sqrt(2 / (k * k * cin // group))
    inputs = [x, g.const("w", w)] + ([g.const("b", g.rng.standard_normal(cout) * 0.1)] if bias else [])
    return g.node("Conv", inputs, kernel_shape=[k, k], strides=[stride, stride], group=group, pads=[k // 2] * 4)


def _logits_model(g: _GraphMaker, name: str, size: int, logits: str) -> onnx.ModelProto:
    """The graph as a model from ``input`` [1, 3, size, size] to ``logits`` [1, 1000], no Softmax, as torchvision exports it.

    Logits rather than probabilities also keep int8 fidelity measurable: a random net's 1000
    probabilities are all near 1/1000, below the 1/256 step of an int8 SOFTMAX output."""
    (last,) = [n for n in g.nodes if n.output[0] == logits]
    last.output[0] = "logits"
    graph = helper.make_graph(
        g.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], g.inits,
    )
    return _finish(graph)


def mobilenetv2(seed: int = 0, size: int = 224) -> onnx.ModelProto:
    """Full-size MobileNetV2 (width 1.0, 3.5 M parameters) on [1, 3, size, size] with random weights and no BatchNormalization.

    Stem 3x3/2 (32) + ReLU6, the 17 inverted residuals of ``MOBILENETV2_BLOCKS`` (1x1 expand + ReLU6,
    3x3 depthwise + ReLU6, linear 1x1 project, Add when stride 1 and the width is kept), 1x1 to 1280 +
    ReLU6, global average pool, 1000 logits: the layer shapes of the deployed net, for latency and
    size benchmarks. BatchNorm is folded away as exporters do. The linear projections get ``gain``
    0.7 (about unit gain, with no ReLU after them), 0.5 on residual branches so that the 10 residual
    Adds do not double the activations' variance each time.
    """
    g = _GraphMaker(seed)
    x = g.relu6(_he_conv(g, "input", 3, 32, 3, stride=2))
    cin = 32
    for t, c, n, s in MOBILENETV2_BLOCKS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = g.relu6(_he_conv(g, x, cin, hidden, 1)) if t != 1 else x
            h = g.relu6(_he_conv(g, h, hidden, hidden, 3, stride=stride, group=hidden))
            residual = stride == 1 and cin == c
            h = _he_conv(g, h, hidden, c, 1, gain=0.5 if residual else 0.7)
            x = g.node("Add", [x, h]) if residual else h
            cin = c
    x = g.relu6(_he_conv(g, x, cin, 1280, 1))
    return _logits_model(g, "mobilenetv2", size, g.head(x, 1280, 1000))


def resnet18(seed: int = 0, size: int = 224) -> onnx.ModelProto:
    """Full-size ResNet-18 (11.7 M parameters) on [1, 3, size, size] with random weights and no BatchNormalization.

    Stem 7x7/2 (64) + Relu + MaxPool 3x3/2, four stages of two basic blocks (64, 128, 256, 512
    channels; the first block of stages 2-4 strided, with a 1x1 strided shortcut), global average
    pool, 1000 logits. The second conv of each block is scaled down (``gain`` 0.5) so the residual
    Adds keep the activations' scale.
    """
    g = _GraphMaker(seed)
    x = g.node("Relu", [_he_conv(g, "input", 3, 64, 7, stride=2)])
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for c, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for i in range(2):
            stride = s if i == 0 else 1
            h = g.node("Relu", [_he_conv(g, x, cin, c, 3, stride=stride)])
            h = _he_conv(g, h, c, c, 3, gain=0.5)
            shortcut = x if stride == 1 and cin == c else _he_conv(g, x, cin, c, 1, stride=stride, gain=0.7, bias=False)
            x = g.node("Relu", [g.node("Add", [h, shortcut])])
            cin = c
    return _logits_model(g, "resnet18", size, g.head(x, 512, 1000))


ARCHITECTURES = {"mobilenetv2_block": mobilenetv2_block, "resnet_block": resnet_block, "ds_cnn": ds_cnn}
"""Random-weight architectures by name: ``ARCHITECTURES[name](seed)`` returns the ONNX model."""


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m edgefleet.compiler.model_zoo OUT_DIR\n\n"
              "writes the digits MLP and CNN (ONNX) with their calibration and validation data")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    for zoo in (digits_mlp(Path(argv[0])), digits_cnn(Path(argv[0]))):
        print(f"{zoo.name}: held-out accuracy {zoo.accuracy:.4f}")
        for label, path in (("model", zoo.onnx_path), ("calibration", zoo.calibration_path), ("validation", zoo.validation_path)):
            print(f"  {label:<12} {path}")
    return 0


@dataclass(frozen=True)
class WideDigitsRecipe:
    """An over-parameterised digits MLP (64-512-512-10, about 300k weights) for compression benchmarks:
    the digits MLP is so small that the int8 graph's fixed overhead caps what compression can show."""

    hidden: tuple[int, ...] = (512, 512)
    random_state: int = 0
    max_iter: int = 30
    test_size: float = 0.25
    calibration_samples: int = 200
    version: int = 1

    def key(self) -> str:
        import sklearn

        text = json.dumps({**self.__dict__, "kind": "wide-mlp", "sklearn": sklearn.__version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def digits_mlp_wide(workdir: Path | str, recipe: WideDigitsRecipe = WideDigitsRecipe()) -> ZooModel:
    """The over-parameterised digits MLP in ``workdir``, trained (a few seconds) only if the cache does not match."""
    return _trained(workdir, "digits_mlp_wide", recipe.key(), lambda paths: _train_wide_and_write(recipe, paths))


def digits_mlp_3m(workdir: Path | str) -> ZooModel:
    """A 3.25 M-parameter digits MLP (64-1536-1536-512-10): the model the compiler's search is timed on
    (bench/compile_bench.py). Too big for a 2 MiB microcontroller in int8 unless compressed further."""
    return digits_mlp_wide(workdir, WideDigitsRecipe(hidden=(1536, 1536, 512)))


def _train_wide_and_write(recipe: WideDigitsRecipe, paths: dict[str, Path]) -> float:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x_train, x_test, y_train, y_test = _digits_split(recipe.test_size, recipe.random_state)
    clf = MLPClassifier(hidden_layer_sizes=recipe.hidden, random_state=recipe.random_state, max_iter=recipe.max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few epochs fit the training set; more only cost time
        clf.fit(x_train, y_train)
    return _write_mlp(clf, "digits_mlp_wide", f"wide digits MLP {recipe.hidden}", x_train, x_test, y_test,
                      random_state=recipe.random_state, calibration_samples=recipe.calibration_samples, paths=paths)


@dataclass(frozen=True)
class MobileNetRecipe:
    """A MobileNetV1-style net (Howard et al., 2017) on the digits upsampled to 32x32, for compression
    benchmarks: big enough (about 3.4 M MACs) that onnxruntime's latency tracks its MACs, and built
    of what structured pruning can slim (depthwise-separable blocks, no residual Add)."""

    size: int = 32
    stem: int = 32
    blocks: tuple[tuple[int, int], ...] = ((2, 64), (1, 64), (2, 128), (1, 128))
    """(depthwise stride, pointwise output channels) of each depthwise-separable block."""
    epochs: int = 12
    batch: int = 32
    learning_rate: float = 3e-3
    random_state: int = 0
    test_size: float = 0.25
    version: int = 2

    def key(self) -> str:
        import sklearn
        import torch

        text = json.dumps({**self.__dict__, "kind": "mobilenet", "sklearn": sklearn.__version__, "torch": torch.__version__},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def digits_mobilenet(workdir: Path | str, recipe: MobileNetRecipe = MobileNetRecipe()) -> ZooModel:
    """The MobileNet-style digits net in ``workdir``, trained with PyTorch (the ``train`` extra; under a
    minute on two cores) only if the cache does not match. Input ``input`` float32 ``[1, 1, 32, 32]``."""
    return _trained(workdir, "digits_mobilenet", recipe.key(), lambda paths: _train_mobilenet_and_write(recipe, paths))


def _train_mobilenet_and_write(recipe: MobileNetRecipe, paths: dict[str, Path]) -> float:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    from edgefleet.compiler import inference

    torch.manual_seed(recipe.random_state)
    x, y = load_digits(return_X_y=True)
    small = torch.tensor((x / 16.0).reshape(-1, 1, 8, 8), dtype=torch.float32)
    images = nn.functional.interpolate(small, size=(recipe.size, recipe.size), mode="bilinear", align_corners=False).numpy()
    x_train, x_test, y_train, y_test = train_test_split(
        images, y, test_size=recipe.test_size, random_state=recipe.random_state, stratify=y
    )

    def unit(cin: int, cout: int, k: int, stride: int, groups: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    layers = unit(1, recipe.stem, 3, 1, 1)
    cin = recipe.stem
    for stride, cout in recipe.blocks:
        layers += unit(cin, cin, 3, stride, cin) + unit(cin, cout, 1, 1, 1)
        cin = cout
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))
    opt = torch.optim.Adam(net.parameters(), lr=recipe.learning_rate)
    steps = recipe.epochs * -(-len(x_train) // recipe.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.learning_rate, total_steps=steps)
    xt, yt = torch.tensor(x_train), torch.tensor(y_train)
    gen = torch.Generator().manual_seed(recipe.random_state)
    net.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(recipe.batch):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    net.eval()
    model = _mobilenet_to_onnx(net, recipe)
    with torch.no_grad():
        torch_pred = net(torch.tensor(x_test)).argmax(1).numpy()
    outputs = inference.run_model(model, [{"input": row[None]} for row in x_test])[0]
    onnx_pred = outputs.reshape(len(x_test), -1).argmax(axis=1)
    if np.mean(onnx_pred != torch_pred) > 0.01:
        raise RuntimeError("the MobileNet-style digits net as ONNX disagrees with PyTorch: _mobilenet_to_onnx is wrong")
    accuracy = float(np.mean(onnx_pred == y_test))
    log.info("digits MobileNet: held-out accuracy %.4f", accuracy)
    onnx.save(model, paths["onnx"])
    # Every training sample, labelled: calibration for quantization, and what fine-tuning passes train on.
    np.savez(paths["calibration"], input=x_train, labels=y_train.astype(np.int64))
    np.savez(paths["validation"], input=x_test, labels=y_test.astype(np.int64))
    return accuracy


def _mobilenet_to_onnx(net: object, recipe: MobileNetRecipe) -> onnx.ModelProto:
    """The trained ``nn.Sequential`` as ONNX by hand, each BatchNorm folded into its Conv's weight and bias
    (as exporters in eval mode write it), so the graph is Conv+Relu pairs, GlobalAveragePool, Flatten, Gemm."""
    from torch import nn

    assert isinstance(net, nn.Sequential)
    mods = list(net)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "input"
    i = 0
    while isinstance(mods[i], nn.Conv2d):
        conv, bn = mods[i], mods[i + 1]
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
        w = conv.weight.detach().numpy() * scale[:, None, None, None]
        b = bn.bias.detach().numpy() - bn.running_mean.numpy() * scale
        name = f"conv{len(nodes) // 2 + 1}" + ("_dw" if conv.groups > 1 else "")
        inits += [numpy_helper.from_array(w.astype(np.float32), f"{name}.w"), numpy_helper.from_array(b.astype(np.float32), f"{name}.b")]
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.out"], name=name, kernel_shape=[k, k],
                                      strides=[s, s], pads=[p] * 4, group=conv.groups))
        nodes.append(helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"], name=f"{name}_relu"))
        x = f"{name}.relu"
        i += 3
    fc = mods[-1]
    assert isinstance(fc, nn.Linear)
    inits += [numpy_helper.from_array(fc.weight.detach().numpy().astype(np.float32), "fc.w"),
              numpy_helper.from_array(fc.bias.detach().numpy().astype(np.float32), "fc.b")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "digits_mobilenet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, recipe.size, recipe.size])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return _finish(graph)


YOLO_CLASSES = 4
YOLO_ANCHORS = ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0)), ((30.0, 61.0), (62.0, 45.0), (59.0, 119.0))
"""Anchors (width, height in input pixels) of ``yolo_detector``'s stride-8 and stride-16 heads."""


def yolo_detector(seed: int = 0, size: int = 64) -> onnx.ModelProto:
    """A small YOLOv5-style detector on [1, 3, size, size] (``size`` a multiple of 16) with random weights, as exporters write it.

    Backbone: strided 3x3 Conv + BatchNormalization + SiLU (``x * Sigmoid(x)``) to stride 8 and 16,
    LeakyRelu at the deepest level. Neck: a 1x1 Conv, nearest ``Resize`` x2 and ``Concat`` with the
    stride-8 features. Two heads (stride 8 and 16, 3 anchors, ``YOLO_CLASSES`` classes) each do
    Conv 1x1 -> Reshape [1, 3, 5+C, H, W] -> Transpose -> Reshape [1, 3*H*W, 5+C] -> Sigmoid, then
    decode boxes like YOLOv5: ``xy = (2 s - 0.5 + grid) * stride``, ``wh = (2 s)^2 * anchor``,
    scores as they are. The Reshape targets are computed from ``Shape -> Gather -> Unsqueeze -> Concat``
    as ``torch.onnx`` leaves them, so the converter must fold them. Output ``detections`` is
    ``[1, 240, 5 + C]`` at size 64: (x, y, w, h, objectness, class scores) per anchor and cell.
    """
    g = _GraphMaker(seed)
    outputs_per_anchor = 5 + YOLO_CLASSES

    def silu(x: str) -> str:
        return g.node("Mul", [x, g.node("Sigmoid", [x])])

    def int_const(kind: str, value: int | list[int]) -> str:
        name = g._name(kind)
        g.inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
        return name

    def batch_of(x: str) -> str:
        """Unsqueeze(Gather(Shape(x), 0)): the dynamic batch as exporters compute it."""
        return g.node("Unsqueeze", [g.node("Gather", [g.node("Shape", [x]), int_const("index", 0)], axis=0),
                                    int_const("axes", [0])])

    x = silu(g.bn(g.conv("input", 3, 16, 3, stride=2), 16))  # 16 x 32 x 32
    x = silu(g.bn(g.conv(x, 16, 16, 3, stride=2), 16))  # 16 x 16 x 16
    p3 = silu(g.bn(g.conv(x, 16, 32, 3, stride=2), 32))  # 32 x 8 x 8, stride 8
    p4 = g.node("LeakyRelu", [g.bn(g.conv(p3, 32, 64, 3, stride=2), 64)], alpha=0.1)  # 64 x 4 x 4, stride 16
    lateral = silu(g.bn(g.conv(p4, 64, 32, 1, pads=[0, 0, 0, 0]), 32))
    scales = g.const("scales", np.array([1.0, 1.0, 2.0, 2.0]))
    up = g.node("Resize", [lateral, "", scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                nearest_mode="floor")  # 32 x 8 x 8
    fused = silu(g.bn(g.conv(g.node("Concat", [up, p3], axis=1), 64, 32, 3), 32))

    heads = []
    for features, channels, stride, anchors in ((fused, 32, 8, YOLO_ANCHORS[0]), (lateral, 32, 16, YOLO_ANCHORS[1])):
        cells_per_side = size // stride
        raw = g.conv(features, channels, 3 * outputs_per_anchor, 1, pads=[0, 0, 0, 0], bias=True)
        batch = batch_of(raw)
        grid_shape = g.node("Concat", [batch, int_const("dims", [3, outputs_per_anchor, cells_per_side, cells_per_side])], axis=0)
        cells = g.node("Transpose", [g.node("Reshape", [raw, grid_shape])], perm=[0, 1, 3, 4, 2])
        flat_shape = g.node("Concat", [batch, int_const("dims", [3 * cells_per_side**2, outputs_per_anchor])], axis=0)
        s = g.node("Sigmoid", [g.node("Reshape", [cells, flat_shape])])  # [1, 3*H*W, 5+C]
        ys, xs = np.meshgrid(np.arange(cells_per_side), np.arange(cells_per_side), indexing="ij")
        grid = np.tile(np.stack([xs, ys], -1).reshape(1, cells_per_side**2, 2), (1, 3, 1)) - 0.5
        anchor = np.repeat(np.array(anchors), cells_per_side**2, axis=0)[None]
        starts, ends, axes = int_const("starts", [0]), int_const("ends", [2]), int_const("axes", [2])
        xy = g.node("Slice", [s, starts, ends, axes])
        wh = g.node("Slice", [s, ends, int_const("ends", [4]), axes])
        scores = g.node("Slice", [s, int_const("starts", [4]), int_const("ends", [outputs_per_anchor]), axes])
        two = g.const("two", np.array(2.0))
        xy = g.node("Mul", [g.node("Add", [g.node("Mul", [xy, two]), g.const("grid", grid)]), g.const("stride", np.array(stride))])
        wh = g.node("Mul", [g.node("Pow", [g.node("Mul", [wh, two]), two]), g.const("anchor", anchor)])
        heads.append(g.node("Concat", [xy, wh, scores], axis=2))
    detections = helper.make_node("Concat", heads, ["detections"], name="detections", axis=1)
    boxes = 3 * sum((size // stride) ** 2 for stride in (8, 16))
    graph = helper.make_graph(
        [*g.nodes, detections], "yolo_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, boxes, outputs_per_anchor])],
        g.inits,
    )
    return _finish(graph)


RAPIDOCR_MODELS = {
    "ppocr_cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", [1, 3, 48, 192]),
    "ppocr_rec": ("ch_PP-OCRv4_rec_infer.onnx", [1, 3, 48, 320]),
    "ppocr_det": ("ch_PP-OCRv4_det_infer.onnx", [1, 3, 160, 160]),
}
"""Real PP-OCR models shipped inside the ``rapidocr-onnxruntime`` wheel (the ``test`` extra): the
text-direction classifier, the v4 recogniser and the v4 detector, with the static input shape
used to convert each (the ONNX inputs have a dynamic batch, height or width)."""


def rapidocr_model(name: str) -> tuple[Path, list[int]]:
    """The installed ONNX file of ``RAPIDOCR_MODELS[name]`` and its input shape; nothing is downloaded.

    Found through the package's installed file list, so ``rapidocr_onnxruntime`` (and OpenCV) is not imported.
    """
    from importlib import metadata

    filename, shape = RAPIDOCR_MODELS[name]
    try:
        files = metadata.files("rapidocr-onnxruntime") or []
    except metadata.PackageNotFoundError:
        raise FileNotFoundError("rapidocr-onnxruntime is not installed (pip install 'edgefleet[test]')") from None
    for f in files:
        if f.name == filename:
            return Path(str(f.locate())), list(shape)
    raise FileNotFoundError(f"rapidocr-onnxruntime is installed but has no {filename}")

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(sys.argv[1:]))
