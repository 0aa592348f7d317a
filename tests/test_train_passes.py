"""The training passes (``train`` extra): the ONNX -> torch bridge, fine-tuning that keeps compression, distillation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compiler import inference, model_zoo, stats
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.compress import PipelineError, parse_pipeline, run_pipeline
from edgefleet.compiler.errors import PassError
from edgefleet.compiler.passes import (
    Distill,
    DistillConfig,
    Finetune,
    FinetuneConfig,
    PassData,
    _graph,
)
from edgefleet.deploy.cli import main

torch = pytest.importorskip("torch")
training = pytest.importorskip("edgefleet.compiler.training")


def _digits(samples: int | None = None) -> tuple[Dataset, Dataset]:
    """The zoo's digits split (scikit-learn's 8x8 digits, 25% held out, seed 0): labelled training and held-out data."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    n = samples or len(x_train)
    return (Dataset(arrays={"input": x_train[:n, None]}, labels=y_train[:n], source="digits train"),
            Dataset(arrays={"input": x_test[:, None]}, labels=y_test, source="digits held-out"))


def _model(name: str) -> onnx.ModelProto:
    """The model set's architectures; the bridge's equivalence needs only their structure, so random weights."""
    rng = np.random.default_rng(0)
    if name == "digits_mlp":
        return model_zoo.mlp_to_onnx([rng.standard_normal((64, 32)), rng.standard_normal((32, 10))],
                                     [rng.standard_normal(32), rng.standard_normal(10)])
    if name == "digits_cnn":
        shapes = {"W1": (8, 1, 3, 3), "b1": (8,), "W2": (16, 8, 3, 3), "b2": (16,), "W3": (256, 10), "b3": (10,)}
        return model_zoo.cnn_to_onnx({k: rng.standard_normal(v) * 0.3 for k, v in shapes.items()})
    return model_zoo.ARCHITECTURES[name](0)


def _input_shape(model: onnx.ModelProto) -> list[int]:
    return [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def _compare(model: onnx.ModelProto, samples: int = 6) -> float:
    x = np.random.default_rng(1).standard_normal((samples, *_input_shape(model))).astype(np.float32)
    name = model.graph.input[0].name
    ref = inference.run_model(model, [{name: row} for row in x])
    got = training.OnnxModule(model)(torch.from_numpy(x))
    return max(float(np.abs(r - g.detach().numpy()).max()) for r, g in zip(ref, got, strict=True))


# --- the bridge ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "mobilenetv2_block", "resnet_block", "ds_cnn"])
def test_the_bridge_reproduces_onnxruntime_on_the_model_set(name: str) -> None:
    model = _model(name)
    assert _compare(model) < 1e-5
    # Untrained, the write-back gives the very same initializers.
    back = training.OnnxModule(model).write_back()
    assert [i.SerializeToString() for i in back.graph.initializer] == [i.SerializeToString() for i in model.graph.initializer]


def _tiny(nodes: list[onnx.NodeProto], shape: list[int], out_shape: list[int], **consts: np.ndarray) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


_R = np.random.default_rng(0)
_W = _R.standard_normal((4, 2, 3, 3)).astype(np.float32)

OP_GRAPHS = {
    "conv with uneven pads, stride and dilation": _tiny(
        [helper.make_node("Conv", ["x", "W"], ["y"], pads=[0, 1, 2, 1], strides=[2, 1], dilations=[1, 2])],
        [1, 2, 7, 7], [1, 4, 4, 5], W=_W),
    "grouped conv": _tiny([helper.make_node("Conv", ["x", "W"], ["y"], group=2, pads=[1, 1, 1, 1])],
                          [1, 4, 5, 5], [1, 4, 5, 5], W=_W),
    "gemm with transA, alpha, beta": _tiny(
        [helper.make_node("Gemm", ["x", "B", "C"], ["y"], transA=1, alpha=0.5, beta=2.0)],
        [3, 1], [1, 4], B=_R.standard_normal((3, 4)).astype(np.float32), C=_R.standard_normal(4).astype(np.float32)),
    "max pool with uneven pads and average pool": _tiny(
        [helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0]),
         helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)],
        [1, 2, 6, 6], [1, 2, 4, 4]),
    "reshape, transpose, concat, squeeze, unsqueeze": _tiny(
        [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
         helper.make_node("Concat", ["t", "t"], ["c"], axis=1), helper.make_node("Unsqueeze", ["c", "a"], ["u"]),
         helper.make_node("Squeeze", ["u", "a"], ["y"])],
        [1, 2, 3, 2], [1, 12, 2], s=np.array([0, 2, 6], np.int64), a=np.array([3], np.int64)),
    "elementwise and activations": _tiny(
        [helper.make_node("LeakyRelu", ["x"], ["l"], alpha=0.2), helper.make_node("Clip", ["l", "lo", "hi"], ["c"]),
         helper.make_node("Sub", ["c", "k"], ["s"]), helper.make_node("Div", ["s", "k"], ["d"]),
         helper.make_node("Tanh", ["d"], ["t"]), helper.make_node("Sigmoid", ["t"], ["g"]),
         helper.make_node("LogSoftmax", ["g"], ["y"], axis=1)],
        [1, 5], [1, 5], lo=np.array(-0.5, np.float32), hi=np.array(1.5, np.float32), k=np.full(5, 3.0, np.float32)),
}


@pytest.mark.parametrize("model", OP_GRAPHS.values(), ids=OP_GRAPHS.keys())
def test_the_bridge_follows_onnx_semantics_op_by_op(model: onnx.ModelProto) -> None:
    assert _compare(model) < 1e-5


def test_an_unsupported_operator_is_refused_naming_node_and_op() -> None:
    model = _tiny([helper.make_node("MatMul", ["x", "W"], ["h"], name="dense"), helper.make_node("Erf", ["h"], ["y"], name="gelu_erf")],
                  [1, 4], [1, 3], W=np.ones((4, 3), np.float32))
    with pytest.raises(_graph.NodeError, match=r"node 'gelu_erf': operator 'Erf' .* not supported .* supports .*Conv"):
        training.OnnxModule(model)
    data = PassData(evaluation=Dataset(arrays={"x": np.ones((4, 1, 4), np.float32)}),
                    calibration=Dataset(arrays={"x": np.ones((8, 1, 4), np.float32)}, labels=np.zeros(8, np.int64)))
    with pytest.raises(PipelineError) as err:
        run_pipeline(model, parse_pipeline("finetune"), data)
    assert err.value.node == "gelu_erf" and "'Erf'" in str(err.value)


def test_training_after_int8_says_to_reorder(digits: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = digits
    with pytest.raises(PipelineError, match="after int8-static at node .*: .*put training passes before int8"):
        run_pipeline(model, parse_pipeline("int8,finetune"), data)


# --- fine-tuning -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[onnx.ModelProto, PassData]:
    """A digits MLP (64-128-10) trained here by the finetune pass from random weights (seconds, unlike the zoo's),
    with 400 labelled training samples and the held-out digits."""
    rng = np.random.default_rng(0)
    untrained = model_zoo.mlp_to_onnx([rng.standard_normal((64, 128)) * 0.18, rng.standard_normal((128, 10)) * 0.12],
                                      [np.zeros(128), np.zeros(10)])
    train, held_out = _digits()
    model = Finetune(FinetuneConfig(epochs=10, lr=0.003))(untrained, PassData(evaluation=held_out, calibration=train)).model
    return model, PassData(evaluation=held_out, calibration=train.take(range(400)))


def test_a_teacher_trained_by_finetune_from_scratch_is_accurate(digits: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = digits
    outputs = inference.run_model(model, list(data.evaluation.feeds()))[0]
    assert np.mean(outputs.reshape(len(data.evaluation), -1).argmax(axis=1) == data.evaluation.labels) > 0.95


def test_finetune_recovers_accuracy_after_pruning_and_keeps_the_zeros(digits: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = digits
    pruned = _pipeline_model(model, data, "prune:0.9:bias_correction=false")
    report = Finetune(FinetuneConfig(epochs=4, lr=0.003))(pruned, data)
    for layer in _graph.layers(pruned):
        assert np.array_equal(_graph.array(report.model, layer.weight) == 0, _graph.array(pruned, layer.weight) == 0)
    assert report.report.nonzero_params == stats.count_params(pruned)[1]
    f = report.report.fidelity
    assert f.accuracy is not None and f.reference_accuracy is not None
    assert f.accuracy > f.reference_accuracy + 0.02, f
    assert any(n.startswith("before: ") for n in report.report.notes) and any(n.startswith("after: ") for n in report.report.notes)


def _pipeline_model(model: onnx.ModelProto, data: PassData, spec: str) -> onnx.ModelProto:
    return run_pipeline(model, parse_pipeline(spec), data).model


def test_finetune_after_clustering_trains_the_codebook_only(digits: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = digits
    clustered = _pipeline_model(model, data, "prune:0.5,cluster:8")
    tuned = Finetune(FinetuneConfig(epochs=2, lr=0.001))(clustered, data).model
    for layer in _graph.layers(clustered):
        before, after = _graph.array(clustered, layer.weight), _graph.array(tuned, layer.weight)
        values, inverse = np.unique(before, return_inverse=True)
        assert np.unique(after).size <= values.size <= 8
        # Weights that shared a value still share one, zeros stay zero, and the shared values moved.
        for k in range(values.size):
            assert np.unique(after.ravel()[inverse.ravel() == k]).size == 1
        assert np.array_equal(after == 0, before == 0)
        assert not np.array_equal(np.unique(after), values)


def test_finetune_needs_labelled_training_samples(digits: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = digits
    unlabelled = Dataset(arrays=data.calibration.arrays, source="calib.npz")  # type: ignore[union-attr]
    with pytest.raises(PassError, match=r"needs labels: the training samples \(calib.npz\) have no 'labels'"):
        Finetune()(model, PassData(evaluation=data.evaluation, calibration=unlabelled))
    with pytest.raises(PassError, match="needs training samples: pass --data"):
        Finetune()(model, PassData(evaluation=data.evaluation))
    wrong = Dataset(arrays=data.calibration.arrays, labels=data.calibration.labels + 5)  # type: ignore[union-attr, operator]
    with pytest.raises(PassError, match="labels must be class indices 0..9"):
        Finetune()(model, PassData(evaluation=data.evaluation, calibration=wrong))


def test_finetune_is_deterministic(digits: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = digits
    a = Finetune(FinetuneConfig(epochs=1))(model, data).model
    b = Finetune(FinetuneConfig(epochs=1))(model, data).model
    assert a.SerializeToString() == b.SerializeToString() != model.SerializeToString()


# --- distillation ----------------------------------------------------------------------------------


def test_distill_returns_a_smaller_student_with_the_three_way_report(digits: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = digits
    result = Distill(DistillConfig(width=0.25, epochs=20))(model, data)
    student = result.model
    teacher_params, student_params = stats.count_params(model)[0], stats.count_params(student)[0]
    assert student_params * 3.5 < teacher_params
    assert [o.name for o in student.graph.output] == [o.name for o in model.graph.output]
    out = inference.run_model(student, list(data.evaluation.feeds()))[0]
    assert out.shape == (len(data.evaluation), 1, 10)
    notes = "\n".join(result.report.notes)
    for text in ("teacher: ", "distilled student: ", "student trained alone: ", "fewer parameters than the teacher"):
        assert text in notes
    accuracy = result.report.fidelity.accuracy
    assert accuracy is not None and accuracy > 0.8
    assert f"distilled student: {student_params} params, accuracy {accuracy:.2%}" in notes


def test_distill_without_labels_learns_from_soft_labels_only(digits: tuple[onnx.ModelProto, PassData]) -> None:
    model, data = digits
    unlabelled = Dataset(arrays=data.calibration.arrays)  # type: ignore[union-attr]
    result = Distill(DistillConfig(width=0.25, epochs=20))(model, PassData(evaluation=data.evaluation, calibration=unlabelled))
    notes = "\n".join(result.report.notes)
    assert "soft labels only" in notes and "student trained alone" not in notes
    assert result.report.fidelity.top1_agreement is not None and result.report.fidelity.top1_agreement > 0.85


def test_distill_into_a_given_student_architecture(digits: tuple[onnx.ModelProto, PassData], tmp_path: Path) -> None:
    model, data = digits
    rng = np.random.default_rng(0)
    student = model_zoo.mlp_to_onnx([rng.standard_normal((64, 32)), rng.standard_normal((32, 10))], [np.zeros(32), np.zeros(10)])
    path = tmp_path / "student.onnx"
    onnx.save(student, str(path))
    result = Distill(DistillConfig(student=str(path), epochs=4, alone=False))(model, data)
    assert stats.count_params(result.model)[0] == stats.count_params(student)[0]
    wrong = model_zoo.mlp_to_onnx([rng.standard_normal((64, 5))], [np.zeros(5)])
    onnx.save(wrong, str(path))
    with pytest.raises(PassError, match=r"outputs \[\('probabilities', \[1, 5\]\)\] differ from the teacher's"):
        Distill(DistillConfig(student=str(path), epochs=1))(model, data)


@pytest.fixture(scope="module")
def files(digits: tuple[onnx.ModelProto, PassData], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The trained digits MLP and a labelled .npz (held-out digits) as the CLI takes them."""
    model, data = digits
    folder = tmp_path_factory.mktemp("train-cli")
    onnx.save(model, str(folder / "mlp.onnx"))
    np.savez(folder / "digits.npz", input=data.evaluation.arrays["input"][:, 0], labels=data.evaluation.labels)
    return folder / "mlp.onnx", folder / "digits.npz"


def test_the_compress_command_runs_training_passes(files: tuple[Path, Path], tmp_path: Path) -> None:
    model, samples = files
    out = tmp_path / "student.onnx"
    result = CliRunner().invoke(main, ["compress", str(model), "--pipeline", "distill:width=0.25:epochs=3,finetune:epochs=1",
                                       "--data", str(samples), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [s["pass_name"] for s in report["steps"]] == ["distill", "finetune"]
    assert report["final"]["params"] * 3.5 < report["original"]["params"]
    assert any(n.startswith("student trained alone: ") for n in report["steps"][0]["notes"])
    assert stats.count_params(onnx.load(str(out)))[0] == report["final"]["params"]


def test_without_torch_the_compiler_works_and_a_training_pass_says_how_to_install_it(files: tuple[Path, Path]) -> None:
    model, samples = files
    script = f"""
import sys
sys.modules["torch"] = None
from edgefleet.compiler import calibration
from edgefleet.compiler.compress import PipelineError, parse_pipeline, run_pipeline
from edgefleet.compiler.onnx_model import load_model
from edgefleet.compiler.passes import PassData
loaded = load_model({str(model)!r})
train, held_out = calibration.split(calibration.load_dataset({str(samples)!r}, loaded.inputs))
data = PassData(evaluation=held_out, calibration=train)
run_pipeline(loaded.model, parse_pipeline("prune:0.5"), data)
try:
    run_pipeline(loaded.model, parse_pipeline("prune:0.5,finetune"), data)
except PipelineError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "pass 'finetune'" in done.stdout and "after prune" in done.stdout
    assert "pip install 'edgefleet[train]'" in done.stdout
