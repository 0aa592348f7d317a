"""Fine-tuning (``train`` extra): a short supervised training that recovers the accuracy a compression
pass cost, without undoing the compression.

It trains on the pass's calibration samples (the part of ``--data`` not held out, or
``--calibration``), which must carry ``labels``; the held-out evaluation samples are never trained on.
The model goes through ``edgefleet.compiler.training``'s ONNX -> torch bridge and the trained values
are written back into the same graph, so the node structure is unchanged. What compression made
of a weight is kept, as in Deep Compression (Han et al. 2016):

- ``keep_sparsity``: a weight's zeros are a fixed mask (pruned connections stay pruned);
- ``keep_clusters``: a weight with few distinct values (at most ``max_codebook``, and fewer than
  half its size: what ``cluster`` leaves) trains its codebook only: every weight stays
  ``centroids[index]``, and each centroid moves by the summed gradient of the weights sharing it.

So it composes between compression steps: ``prune:0.8,finetune,cluster:16,finetune,int8,entropy``.
It must come before ``int8`` (the bridge trains float graphs and refuses QDQ operators).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import ClassVar

import numpy as np
import onnx

from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.errors import PassError
from edgefleet.compiler.passes import _graph
from edgefleet.compiler.passes.base import Pass, PassConfig, PassData, Transformed

log = logging.getLogger(__name__)


def training_module(pass_name: str) -> ModuleType:
    """``edgefleet.compiler.training``, imported only when a training pass runs, because it needs torch."""
    try:
        from edgefleet.compiler import training
    except ImportError as exc:
        raise PassError(f"needs PyTorch, which is not installed ({exc}); install the train extra: "
                        "pip install 'edgefleet[train]'", pass_name=pass_name) from None
    return training


def training_data(data: PassData, pass_name: str, *, labels: bool) -> Dataset:
    """The samples a training pass may train on: the calibration samples (never the held-out ones)."""
    train = data.calibration
    if train is None or train.synthetic or len(train) == 0:
        raise PassError("needs training samples: pass --data (an .npz with the inputs and a 'labels' array; its "
                        "non-held-out part is trained on) or --calibration", pass_name=pass_name)
    if labels and train.labels is None:
        where = f" ({train.source})" if train.source else ""
        raise PassError(f"needs labels: the training samples{where} have no 'labels' array; save one integer class "
                        "per sample under 'labels' in the .npz", pass_name=pass_name)
    return train


def arrays_for(module: object, data: Dataset) -> list[np.ndarray]:
    """The dataset's arrays in the order of the bridged model's inputs."""
    return [data.arrays[name] for name in module._inputs]  # type: ignore[attr-defined]


def check_labels(module: object, data: Dataset, training: ModuleType, pass_name: str) -> None:
    """Labels must be class indices of the model's first output."""
    if data.labels is None:
        return
    classes = training.logits(module, [a[:1] for a in arrays_for(module, data)]).shape[1]
    if data.labels.min() < 0 or data.labels.max() >= classes:
        raise PassError(f"labels range over [{data.labels.min()}, {data.labels.max()}] but the model's first output has "
                        f"{classes} classes; labels must be class indices 0..{classes - 1}", pass_name=pass_name)


@dataclass(frozen=True)
class FinetuneConfig(PassConfig):
    scheme: ClassVar[str] = "finetune"

    epochs: int = 3
    lr: float = 0.001
    """Adam's learning rate, decayed to zero over the run (cosine)."""
    batch: int = 32
    seed: int = 0
    keep_sparsity: bool = True
    keep_clusters: bool = True
    max_codebook: int = 256
    threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"finetune: epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"finetune: lr must be positive, got {self.lr}")
        if self.batch < 1 or self.threads < 1:
            raise ValueError("finetune: batch and threads must be at least 1")


def ties(model: onnx.ModelProto, config: FinetuneConfig, training: ModuleType) -> tuple[dict[str, object], list[str]]:
    """The constraint of each Conv/Gemm/MatMul weight (mask or codebook), and a note for each."""
    found: dict[str, object] = {}
    notes: list[str] = []
    for layer in _graph.layers(model):
        if layer.weight in found:
            continue
        w = _graph.array(model, layer.weight)
        if w.dtype != np.float32:
            continue
        values, inverse = np.unique(w, return_inverse=True)
        zeros = w == 0
        if config.keep_clusters and values.size <= config.max_codebook and values.size * 2 < w.size:
            nonzero = values != 0
            # Centroid indices over the non-zero values; -1 marks a zero that stays zero.
            remap = np.where(nonzero, np.cumsum(nonzero) - 1, -1)
            indices = remap[inverse].reshape(w.shape)
            found[layer.weight] = training.Tie(indices=indices, centroids=values[nonzero].astype(np.float32))
            notes.append(f"{layer.name}: trains its {int(nonzero.sum())} shared values (+ zero), not {w.size} weights")
        elif config.keep_sparsity and zeros.any():
            found[layer.weight] = training.Tie(mask=(~zeros).astype(np.float32))
            notes.append(f"{layer.name}: {zeros.mean():.1%} zeros kept")
    return found, notes


class Finetune(Pass[FinetuneConfig]):
    config_type = FinetuneConfig

    def requires(self, model: onnx.ModelProto, data: PassData) -> None:
        training_module(self.name)
        training_data(data, self.name, labels=True)

    def apply(self, model: onnx.ModelProto, data: PassData) -> Transformed:
        cfg = self.config
        training = training_module(self.name)
        train = training_data(data, self.name, labels=True)
        constraints, notes = ties(model, cfg, training)
        module = training.OnnxModule(model, ties=constraints)
        check_labels(module, train, training, self.name)
        x = arrays_for(module, train)
        evaluation = data.evaluation if data.evaluation.labels is not None and not data.evaluation.synthetic else None
        x_eval = arrays_for(module, evaluation) if evaluation is not None else None

        def measure() -> str:
            text = f"training accuracy {training.accuracy(module, x, train.labels):.2%}"
            if evaluation is not None:
                text += f", held-out {training.accuracy(module, x_eval, evaluation.labels):.2%}"
            return text

        before = measure()
        schedule = training.Schedule(epochs=cfg.epochs, lr=cfg.lr, batch=cfg.batch, seed=cfg.seed, threads=cfg.threads)
        losses = training.fit(module, x, schedule, labels=train.labels)
        after = measure()
        log.info("finetune: %s -> %s", before, after)
        notes += [f"{cfg.epochs} epochs on {len(train)} samples: loss {losses[0]:.4f} -> {losses[-1]:.4f}",
                  f"before: {before}", f"after: {after}"]
        return Transformed(model=module.write_back(), modified=True, notes=tuple(notes))
