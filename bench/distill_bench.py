"""Distillation and fine-tuning benchmark (``train`` extra): what training adds to compression, on held-out digits.

    .venv/bin/python bench/distill_bench.py [--workdir /tmp/edgefleet-bench] [--seeds 3]

Teacher: the zoo's over-parameterised digits MLP (``digits_mlp_wide``, 64-512-512-10, 301k
parameters). Data: the zoo's split of scikit-learn's 8x8 digits, 1347 training and 450 held-out
digits; everything is trained on training digits and scored on the held-out ones.

1. Distillation into the teacher's graph at width 0.45 (64-230-230-10, 4.2x fewer parameters),
   random initial weights, 30 epochs: teacher vs distilled student vs the same student trained on
   the labels alone (same initial weights, seed, epochs, schedule), (a) on all 1347 training digits
   and (b) on a transfer set of 400 labelled digits, each the mean over ``--seeds`` seeds (a seed
   sets the initial weights, the batch order and the 400-digit subset).
2. Fine-tuning after aggressive pruning: ``prune:0.9`` (with and without bias correction) and
   structured ``channels:0.5`` before and after ``finetune``, and the Deep Compression pipeline
   with and without fine-tuning between its steps.

Prints Markdown tables (figures for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from edgefleet.compiler import model_zoo, stats
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.compress import parse_pipeline, run_pipeline
from edgefleet.compiler.passes import PassData
from edgefleet.compiler.passes.distill import DistillConfig, distill

WIDTH = 0.45
EPOCHS = 30
TRANSFER = 400


def _digits() -> tuple[Dataset, Dataset]:
    """The zoo's split (25% held out, seed 0, stratified), samples shaped like the model's [1, 64] input."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return (Dataset(arrays={"input": x_train[:, None]}, labels=y_train),
            Dataset(arrays={"input": x_test[:, None]}, labels=y_test))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def bench_distill(teacher: onnx.ModelProto, train: Dataset, held_out: Dataset, seeds: int) -> None:
    print(f"### Distillation: digits_mlp_wide -> width {WIDTH}, {EPOCHS} epochs, T=4, alpha=0.9\n")
    print("| training data | teacher | distilled student | student alone | distilled - alone | student params (teacher/student) | time |")
    print("|---|---|---|---|---|---|---|")
    for size in (len(train), TRANSFER):
        label = f"{size} labelled digits, mean of {seeds} seeds"
        results = []
        start = time.perf_counter()
        for seed in range(seeds):
            subset = train.take(np.sort(np.random.default_rng(seed).permutation(len(train))[:size]))
            results.append(distill(teacher, subset, held_out, DistillConfig(width=WIDTH, epochs=EPOCHS, seed=seed)))
        seconds = (time.perf_counter() - start) / seeds
        mean = statistics.mean
        teacher_acc = results[0].teacher_score.accuracy
        student = mean(r.student_score.accuracy or 0.0 for r in results)
        alone = mean(r.alone_score.accuracy or 0.0 for r in results if r.alone_score is not None)
        each = ", ".join(f"{100 * (r.student_score.accuracy or 0):.2f}/{100 * (r.alone_score.accuracy or 0):.2f}"
                         for r in results if r.alone_score is not None)
        first = results[0]
        ratio = first.teacher_score.params / first.student_score.params
        print(f"| {label} | {_pct(teacher_acc)} | {_pct(student)} | {_pct(alone)} | {100 * (student - alone):+.2f} pts "
              f"| {first.student_score.params} ({ratio:.2f}x fewer) | {seconds:.1f} s |")
        print(f"|   per seed (distilled/alone) | | {each} | | | | |")
    print()


def bench_finetune(model: onnx.ModelProto, train: Dataset, held_out: Dataset) -> None:
    data = PassData(evaluation=held_out, calibration=train)
    print("### Fine-tuning after compression (digits_mlp_wide, fine-tuned on the 1347 training digits)\n")
    print("| pipeline | non-zero params | held-out accuracy | vs fp32 | size shipped | vs fp32 | time |")
    print("|---|---|---|---|---|---|---|")
    fp32_size = model.ByteSize()
    pipelines = [
        "prune:0.9:bias_correction=false",
        "prune:0.9",
        "prune:0.9,finetune:epochs=10:lr=0.003",
        "channels:0.5:criterion=variance",
        "channels:0.5:criterion=variance,finetune:epochs=10:lr=0.003",
        "prune:0.9,cluster:16,int8,entropy",
        "prune:0.9,finetune:epochs=10:lr=0.003,cluster:16,finetune:epochs=3:lr=0.0003,int8,entropy",
    ]
    for spec in pipelines:
        start = time.perf_counter()
        result = run_pipeline(model, parse_pipeline(spec), data)
        seconds = time.perf_counter() - start
        f = result.fidelity
        drop = 100 * ((f.accuracy or 0) - (f.reference_accuracy or 0))
        nonzero = stats.count_params(result.model)[1]
        print(f"| `{spec}` | {nonzero} | {_pct(f.accuracy)} | {drop:+.2f} pts | {result.final_bytes} B "
              f"| {fp32_size / max(1, result.final_bytes):.1f}x smaller | {seconds:.1f} s |")
    print()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgefleet-bench"), help="where the zoo models are cached")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the reduced-data distillation (default 3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    zoo = model_zoo.digits_mlp_wide(args.workdir)
    teacher = onnx.load(str(zoo.onnx_path))
    train, held_out = _digits()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 training thread; "
          f"teacher {stats.count_params(teacher)[0]} params, held-out accuracy {100 * zoo.accuracy:.2f}%\n")
    bench_distill(teacher, train, held_out, args.seeds)
    bench_finetune(teacher, train, held_out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
