"""Small trained models for the demo, the end-to-end tests and benchmarks, made by code, not checked in.

``digits_mlp`` trains scikit-learn's ``MLPClassifier`` on the 8x8 digits bundled with scikit-learn
(no download) and writes it as ONNX by hand with ``onnx.helper``: MatMul, Add, Relu, MatMul, Add,
Softmax, opset 17, input ``input`` float32 ``[1, 64]`` (pixels scaled to [0, 1]) and output
``probabilities`` float32 ``[1, 10]``. The batch is a static 1 because devices classify one sample
at a time. MatMul+Add rather than Gemm: onnxruntime's per-channel QDQ quantization of Gemm stores
more metadata, and the int8 model came out 26.4 KB instead of 23.7 KB (2.9x instead of 3.3x smaller).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    name = "digits_mlp"
    paths = {
        "onnx": workdir / f"{name}.onnx",
        "calibration": workdir / "digits_calibration.npz",
        "validation": workdir / "digits_validation.npz",
    }
    stamp = workdir / f"{name}.stamp.json"
    cached = _cached(stamp, paths, recipe.key())
    if cached is not None:
        accuracy = cached
    else:
        accuracy = _train_and_write(recipe, paths)
        stamp.write_text(
            json.dumps(
                {"recipe": recipe.key(), "accuracy": accuracy, "sha256": {k: _sha256(p) for k, p in paths.items()}}, indent=2
            )
        )
    return ZooModel(
        name=name,
        onnx_path=paths["onnx"],
        calibration_path=paths["calibration"],
        validation_path=paths["validation"],
        accuracy=accuracy,
    )


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
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    from edgefleet.compiler import inference

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel values are 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=recipe.test_size, random_state=recipe.random_state, stratify=y
    )
    clf = MLPClassifier(hidden_layer_sizes=(recipe.hidden,), random_state=recipe.random_state, max_iter=recipe.max_iter)
    clf.fit(x_train, y_train)
    model = mlp_to_onnx(clf.coefs_, clf.intercepts_)

    outputs = inference.run_model(model, [{"input": row[None, :]} for row in x_test])[0]
    onnx_pred = outputs.reshape(len(x_test), -1).argmax(axis=1)
    sk_pred = clf.predict(x_test)
    if not np.array_equal(onnx_pred, sk_pred):
        raise RuntimeError(
            f"the ONNX graph disagrees with scikit-learn on {int(np.sum(onnx_pred != sk_pred))} of {len(x_test)} "
            "held-out digits: mlp_to_onnx does not compute what MLPClassifier computes"
        )
    accuracy = float(np.mean(onnx_pred == y_test))
    log.info("digits MLP (hidden %d): held-out accuracy %.4f", recipe.hidden, accuracy)

    rng = np.random.default_rng(recipe.random_state)
    calib = x_train[rng.permutation(len(x_train))[: recipe.calibration_samples]]
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


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m edgefleet.compiler.model_zoo OUT_DIR\n\nwrites the digits MLP (ONNX) and its calibration and validation data")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    zoo = digits_mlp(Path(argv[0]))
    print(f"{zoo.name}: held-out accuracy {zoo.accuracy:.4f}")
    for label, path in (("model", zoo.onnx_path), ("calibration", zoo.calibration_path), ("validation", zoo.validation_path)):
        print(f"  {label:<12} {path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main(sys.argv[1:]))
