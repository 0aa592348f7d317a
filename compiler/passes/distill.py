"""Knowledge distillation (``train`` extra): the input model teaches a smaller student, which the pass returns.

The teacher is the pass's input model. The student is either a width-scaled copy of it (``width``:
every hidden Conv/Gemm/MatMul keeps that fraction of its output channels; the graph surgery is
``channel_prune``'s, which removes channels and rewires the layers that read them, so the student
has the teacher's graph, narrower) or an ONNX architecture the user gives (``student=PATH``, same
inputs and outputs as the teacher). ``init=random`` (the default) starts the student from seeded
He-initialised weights; ``init=teacher`` keeps the teacher's weights of the channels it kept.

The loss is Hinton et al.'s (2015): the KL divergence between teacher and student outputs softened
by ``temperature`` T, scaled by T^2, weighted ``alpha``, plus ``1 - alpha`` times cross-entropy to
the labels when the training samples have labels (only the soft term when they do not). Training
uses the calibration samples (the non-held-out part of ``--data``), never the held-out ones.

The report compares three models on the held-out samples: the teacher, the distilled student, and
(``alone``, when there are labels) the same student trained on the labels only, from the same
initial weights with the same seed, epochs and schedule, so the difference is the teacher's.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import ClassVar, Literal

import numpy as np
import onnx

from edgefleet.compiler import stats
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.passes import _graph
from edgefleet.compiler.passes.base import Pass, PassConfig, PassData, Transformed
from edgefleet.compiler.passes.channel_prune import ChannelPrune, ChannelPruneConfig
from edgefleet.compiler.passes.finetune import (
    arrays_for,
    check_labels,
    training_data,
    training_module,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig(PassConfig):
    scheme: ClassVar[str] = "distill"

    width: float = 0.5
    """Fraction of each hidden layer's channels the student keeps (ignored with ``student``)."""
    student: str = ""
    """Path of an ONNX student architecture; empty for a width-scaled copy of the teacher."""
    init: Literal["random", "teacher"] = "random"
    temperature: float = 4.0
    alpha: float = 0.9
    """Weight of the soft (teacher) term; the labels' cross-entropy gets ``1 - alpha``."""
    epochs: int = 30
    lr: float = 0.003
    batch: int = 32
    seed: int = 0
    alone: bool = True
    """Also train the student without the teacher, for the report (doubles the training time)."""
    threads: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.width <= 1.0:
            raise ValueError(f"distill: width must be in (0, 1], got {self.width}")
        if self.init not in ("random", "teacher"):
            raise ValueError(f"distill: init must be 'random' or 'teacher', got {self.init!r}")
        if not self.temperature > 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError("distill: temperature must be positive and alpha in [0, 1]")
        if self.epochs < 1 or self.batch < 1 or self.threads < 1 or not self.lr > 0:
            raise ValueError("distill: epochs, batch and threads must be at least 1, lr positive")


@dataclass(frozen=True)
class Scored:
    """One model of the comparison, on the held-out samples."""

    params: int
    accuracy: float | None
    """Top-1 accuracy against the labels (None without labels)."""
    agreement: float
    """Top-1 agreement with the teacher."""


@dataclass(frozen=True)
class Distilled:
    student: onnx.ModelProto
    teacher_score: Scored
    student_score: Scored
    alone_score: Scored | None
    """The same student trained without the teacher; None without labels or with ``alone=False``."""
    samples: int

    def notes(self) -> tuple[str, ...]:
        def line(label: str, s: Scored) -> str:
            acc = f"accuracy {s.accuracy:.2%}, " if s.accuracy is not None else ""
            return f"{label}: {s.params} params, {acc}agrees with the teacher on {s.agreement:.2%}"

        lines = [line("teacher", self.teacher_score), line("distilled student", self.student_score)]
        if self.alone_score is not None:
            lines.append(line("student trained alone", self.alone_score))
        lines.append(f"trained on {self.samples} samples; {self.teacher_score.params / self.student_score.params:.2f}x "
                     "fewer parameters than the teacher")
        return tuple(lines)


def scaled_student(teacher: onnx.ModelProto, width: float) -> onnx.ModelProto:
    """The teacher with each hidden layer narrowed to ``width`` of its channels (channel_prune's rewiring)."""
    pruner = ChannelPrune(ChannelPruneConfig(ratio=1.0 - width, compensate=False))
    empty = Dataset(arrays={})
    result = pruner.apply(teacher, PassData(evaluation=empty))
    if not result.modified:
        raise ValueError("width scaling found no hidden layer it can narrow (channel_prune's notes: "
                         f"{'; '.join(result.notes) or 'none'}); give an architecture with student=PATH")
    return result.model


def reinitialize(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """A copy with fresh weights: He-normal Conv/Gemm/MatMul weights, zero biases, identity BatchNormalization."""
    out = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    done: set[str] = set()
    for layer in list(_graph.layers(out)):
        if layer.weight in done:
            continue
        done.add(layer.weight)
        w = _graph.array(out, layer.weight)
        fan_in = _graph.as_matrix(layer, w).shape[1]
        _graph.set_array(out, layer.weight, rng.standard_normal(w.shape) * np.sqrt(2.0 / fan_in))
        slot = _graph.bias_slot(out, layer)
        if slot is not None:
            _graph.set_array(out, slot[0], np.zeros_like(_graph.array(out, slot[0])))
    inits = _graph.initializers(out)
    for node in out.graph.node:
        if node.op_type == "BatchNormalization":
            for name, value in zip(node.input[1:5], (1.0, 0.0, 0.0, 1.0), strict=False):
                if name in inits:
                    _graph.set_array(out, name, np.full(list(inits[name].dims), value))
    return out


def _check_student(teacher: onnx.ModelProto, student: onnx.ModelProto, path: str) -> None:
    def signature(graph: onnx.GraphProto, values: object) -> list[tuple[str, list[int]]]:
        inits = {i.name for i in graph.initializer}
        return [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in values if v.name not in inits]  # type: ignore[attr-defined]

    for kind in ("input", "output"):
        want = signature(teacher.graph, getattr(teacher.graph, kind))
        got = signature(student.graph, getattr(student.graph, kind))
        if want != got:
            raise ValueError(f"student {path}: its {kind}s {got} differ from the teacher's {want}; a student must take "
                             "the same inputs and give the same outputs")


def _score(training: ModuleType, module: object, x: list[np.ndarray], labels: np.ndarray | None,
           teacher_top: np.ndarray, model: onnx.ModelProto) -> Scored:
    top = training.logits(module, x).argmax(axis=1)
    return Scored(params=stats.count_params(model)[0],
                  accuracy=float(np.mean(top == labels)) if labels is not None else None,
                  agreement=float(np.mean(top == teacher_top)))


def distill(teacher: onnx.ModelProto, train: Dataset, evaluation: Dataset, config: DistillConfig,
            *, student: onnx.ModelProto | None = None) -> Distilled:
    """Train a student of ``teacher`` on ``train`` and score teacher, student and student-alone on ``evaluation``.

    ``student`` overrides ``config.student`` and ``config.width`` (a model rather than a path).
    """
    training = training_module(config.scheme)
    if student is None and config.student:
        path = Path(config.student)
        if not path.is_file():
            raise ValueError(f"student {path}: no such ONNX file")
        student = onnx.load(str(path))
    if student is not None:
        _check_student(teacher, student, config.student or "model")
    else:
        student = scaled_student(teacher, config.width)
    if config.init == "random":
        student = reinitialize(student, config.seed)
    teacher_module = training.OnnxModule(teacher, trainable=[])
    check_labels(teacher_module, train, training, config.scheme)
    x = arrays_for(teacher_module, train)
    soft = training.logits(teacher_module, x)
    schedule = training.Schedule(epochs=config.epochs, lr=config.lr, batch=config.batch, seed=config.seed,
                                 threads=config.threads)
    distilled = training.OnnxModule(student)
    training.fit(distilled, arrays_for(distilled, train), schedule, labels=train.labels, teacher=soft,
                 temperature=config.temperature, alpha=config.alpha)
    x_eval = arrays_for(teacher_module, evaluation)
    teacher_top = training.logits(teacher_module, x_eval).argmax(axis=1)
    labels = evaluation.labels if not evaluation.synthetic else None
    result = distilled.write_back()
    alone_score = None
    if config.alone and train.labels is not None:
        alone = training.OnnxModule(student)
        training.fit(alone, arrays_for(alone, train), schedule, labels=train.labels)
        alone_score = _score(training, alone, x_eval, labels, teacher_top, student)
    outcome = Distilled(
        student=result,
        teacher_score=_score(training, teacher_module, x_eval, labels, teacher_top, teacher),
        student_score=_score(training, distilled, x_eval, labels, teacher_top, result),
        alone_score=alone_score,
        samples=len(train),
    )
    log.info("distill: %s", "; ".join(outcome.notes()))
    return outcome


class Distill(Pass[DistillConfig]):
    config_type = DistillConfig

    def requires(self, model: onnx.ModelProto, data: PassData) -> None:
        training_module(self.name)
        training_data(data, self.name, labels=False)

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        train = training_data(data, self.name, labels=False)
        outcome = distill(model, train, data.evaluation, self.config)
        notes = outcome.notes()
        if train.labels is None:
            notes += ("no labels: trained on the teacher's soft labels only; no student-alone comparison",)
        return Transformed(model=outcome.student, modified=True, notes=notes)
