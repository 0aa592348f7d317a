"""Compression toolbox benchmark: every technique and the main combinations on the repo's trained models.

    nice .venv/bin/python bench/compress_bench.py [--models cnn,wide,mobilenet] [--runs 300] [--workdir DIR]
                                                  [--svg docs/compression_pareto.svg] [--no-tflm]

For each trained model of the zoo (the digits CNN, the over-parameterised 64-512-512-10 MLP, the
MobileNet-style net on digits upsampled to 32x32) it runs the pipelines of ``PIPELINES`` with the
library's passes (``compress.parse_pipeline``, ``passes.build_pass``) and prints one Markdown table:
parameters, non-zero parameters, MACs, shipped bytes (entropy-coded when the pipeline ends with
``entropy``, else the raw ONNX file), accuracy on the held-out digits (450, never seen by any
pass), and onnxruntime latency (CPU, 1 thread, batch 1). Latencies of one model's variants are
measured side by side in one process, interleaved (each round runs every variant once, in a
rotating order, so load on the shared machine hits them alike); the median of ``--runs`` rounds
after warm-up is reported, with the speed-up against fp32 from the same rounds.

Pipelines sharing a prefix reuse its model (fine-tuning runs once for all its continuations). The
``finetune`` pass (``train`` extra) trains on the model's labelled calibration samples, which only
the MobileNet's carry (its whole training split); the others are skipped there.

Then ``--svg`` writes the Pareto plot (shipped bytes vs held-out accuracy, one panel per model,
every pipeline a point, the Pareto front drawn), and, unless ``--no-tflm``, the TFLite Micro LUT
section: the clustered model as full-integer int8 TFLite, then LUT-compressed
(``tflm.compression``), flash and arena before and after, outputs compared in the TFLM interpreter.
Finally the targets of docs/benchmarks.md are checked and printed as PASS/MISS lines.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgefleet.compiler import calibration, entropy, inference, model_zoo, stats
from edgefleet.compiler.compress import parse_item
from edgefleet.compiler.entropy import EntropyConfig
from edgefleet.compiler.onnx_model import load_model
from edgefleet.compiler.passes import PassData, build_pass

log = logging.getLogger("compress_bench")

WARMUP = 20
MODELS = {"cnn": model_zoo.digits_cnn, "wide": model_zoo.digits_mlp_wide, "mobilenet": model_zoo.digits_mobilenet}

DEEP = "prune:0.5,cluster:16,int8,entropy"
CHANNELS_MB = "channels:0.4:criterion=variance:multiple=8"
PIPELINES: dict[str, list[str]] = {
    "cnn": ["int8,entropy", "mixed:40,entropy", "prune:0.5,entropy", "nm,entropy", "cluster:16,entropy", DEEP,
            "lowrank:0.99", "channels:0.375:criterion=variance", "channels:0.375:criterion=variance,int8,entropy"],
    "wide": ["int8,entropy", "mixed:40,entropy", "prune:0.5,entropy", "nm,entropy", "cluster:16,entropy", DEEP,
             "prune:0.8,cluster:16,int8,entropy", "lowrank:0.99", "lowrank:0.999", "lowrank:0.99,int8,entropy",
             "lowrank:0.99,cluster:16,int8,entropy", "channels:0.5:criterion=variance"],
    "mobilenet": ["int8,entropy", "int8:per_channel=true,entropy", "mixed:30,entropy", "prune:0.5,entropy", "cluster:16,entropy", DEEP,
                  "prune:0.5,cluster:16,mixed:30,entropy", "lowrank:0.99", CHANNELS_MB, f"{CHANNELS_MB},finetune",
                  f"{CHANNELS_MB},finetune,mixed:30,entropy", f"{CHANNELS_MB},finetune,cluster:16,mixed:30,entropy"],
}
SHORT = {"prune:0.5,cluster:16,int8": "deep compr.", CHANNELS_MB: "ch:0.4", "channels:0.375:criterion=variance": "ch:0.375",
         "channels:0.5:criterion=variance": "ch:0.5", ",entropy": "", "finetune": "ft", "per_channel=true": "pc"}
"""Abbreviations for the plot's labels."""


@dataclass
class Row:
    model: str
    pipeline: str
    params: int
    nonzero: int
    macs: int
    shipped: int
    codec: str
    accuracy: float
    onnx: onnx.ModelProto = field(repr=False)
    latency_us: float = 0.0
    speedup: float = 1.0


def subject(name: str, workdir: Path) -> tuple[onnx.ModelProto, PassData]:
    zoo = MODELS[name](workdir)
    loaded = load_model(zoo.onnx_path)
    evaluation = calibration.load_dataset(zoo.validation_path, loaded.inputs)
    calib = calibration.load_dataset(zoo.calibration_path, loaded.inputs)
    return loaded.model, PassData(evaluation=evaluation, calibration=calib)


def accuracy(model: onnx.ModelProto, data: PassData) -> float:
    out = inference.run_model(model, list(data.evaluation.feeds()))[0]
    assert data.evaluation.labels is not None
    return float(np.mean(out.reshape(len(out), -1).argmax(1) == data.evaluation.labels))


def run_all(name: str, model: onnx.ModelProto, data: PassData) -> list[Row]:
    cache: dict[tuple[str, ...], onnx.ModelProto] = {(): model}
    reference = tuple(inference.run_model(model, list(data.evaluation.feeds())))
    rows = [measure_row(name, "(fp32)", model, data, None)]
    for spec in PIPELINES[name]:
        items = [i.strip() for i in spec.split(",")]
        if "finetune" in items and data.calibration is not None and data.calibration.labels is None:
            continue
        coding = EntropyConfig() if items[-1] == "entropy" else None
        steps = items[:-1] if coding else items
        current = model
        for i in range(1, len(steps) + 1):
            key = tuple(steps[:i])
            if key not in cache:
                start = time.perf_counter()
                pass_ = build_pass(parse_item(steps[i - 1]).to_dict())
                cache[key] = pass_(cache[key[:-1]], replace(data, reference=None)).model
                log.info("%s: %s in %.1fs", name, ",".join(key), time.perf_counter() - start)
            current = cache[key]
        rows.append(measure_row(name, spec, current, data, coding))
    del reference
    return rows


def measure_row(name: str, spec: str, model: onnx.ModelProto, data: PassData, coding: EntropyConfig | None) -> Row:
    params, nonzero = stats.count_params(model)
    shipped, codec = model.ByteSize(), "raw"
    if coding is not None:
        e = entropy.measure(model, coding)
        shipped, codec = e.transfer_bytes, e.codec
    return Row(name, spec, params, nonzero, stats.count_macs(model), shipped, codec, accuracy(model, data), model)


def time_rows(rows: list[Row], data: PassData, runs: int) -> None:
    """Median onnxruntime latency of every row's model, interleaved in rotating order."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(r.onnx.SerializeToString(), options, providers=["CPUExecutionProvider"]) for r in rows]
    feed = dict(next(data.evaluation.feeds()))
    times: list[list[float]] = [[] for _ in rows]
    for round_ in range(WARMUP + runs):
        order = list(range(len(rows)))
        order = order[round_ % len(order):] + order[: round_ % len(order)]
        for i in order:
            start = time.perf_counter()
            sessions[i].run(None, feed)
            if round_ >= WARMUP:
                times[i].append(time.perf_counter() - start)
    base = statistics.median(times[0])
    for row, t in zip(rows, times, strict=True):
        row.latency_us = statistics.median(t) * 1e6
        row.speedup = base / statistics.median(t)


def table(rows: list[Row]) -> str:
    lines = ["| model | pipeline | params | non-zero | MACs | shipped bytes | vs fp32 | held-out accuracy | latency (us) | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    base: dict[str, Row] = {}
    for r in rows:
        b = base.setdefault(r.model, r)
        drop = 100 * (r.accuracy - b.accuracy)
        codec = f" ({r.codec})" if r.codec != "raw" else ""
        lines.append(f"| {r.model} | `{r.pipeline}` | {r.params} | {r.nonzero} | {r.macs} | {r.shipped}{codec} | "
                     f"{b.shipped / r.shipped:.2f}x | {100 * r.accuracy:.2f}% ({drop:+.2f}) | {r.latency_us:.0f} | {r.speedup:.2f}x |")
    return "\n".join(lines)


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both size (smaller) and accuracy (higher), by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -1.0
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    plt.rcParams["svg.hashsalt"] = "edgefleet"  # stable ids: the file changes only when the figures do
    names = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        mine = [r for r in rows if r.model == name]
        xs = [r.shipped / 1024 for r in mine]
        ys = [100 * r.accuracy for r in mine]
        floor = max(min(ys) - 1, max(ys) - 12)
        shown = [i for i, y in enumerate(ys) if y >= floor]  # points far below are off the panel (and said so)
        front = [shown[i] for i in pareto([(xs[i], ys[i]) for i in shown])]
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color="tab:green", alpha=0.5, label="Pareto front")
        for r, x, y in zip(mine, xs, ys, strict=True):
            kind = "tab:red" if r.pipeline == "(fp32)" else ("tab:blue" if "finetune" not in r.pipeline else "tab:purple")
            ax.plot(x, y, "o", color=kind)
            label = r.pipeline
            for long, short in SHORT.items():
                label = label.replace(long, short)
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points", rotation=12)
        hidden = len(mine) - len(shown)
        if hidden:
            ax.text(0.02, 0.02, f"{hidden} point(s) below {floor:.0f}% not shown", transform=ax.transAxes, fontsize=7)
        ax.set_xscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
        ax.set_xlabel("shipped size (KiB, log scale)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_ylim(floor, max(ys) + 0.5)
        ax.set_title(f"digits {name}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("edgefleet compression: shipped size vs held-out accuracy (bench/compress_bench.py; "
                 "ch = channel pruning, ft = fine-tuned, pc = per-channel)")
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def tflm_section(workdir: Path) -> list[str]:
    """The clustered model as full-integer int8 TFLite, LUT-compressed, against the uncompressed one in TFLM.

    Built with ``tflite.convert`` and ``tflite.quantize`` directly rather than ``tflm_candidate``:
    that one also requires TFLM and LiteRT to agree within one quantization step, which clustered
    models can miss (2 to 7 steps here, a requantization rounding difference unrelated to LUT).
    """
    from ai_edge_litert.interpreter import Interpreter

    from edgefleet.compiler.passes import Cluster, ClusterConfig
    from edgefleet.compiler.tflite.convert import convert
    from edgefleet.compiler.tflite.quantize import quantize
    from edgefleet.compiler.tflm import compression, micro
    from edgefleet.compiler.tflm.flatbuffer import inline_buffers

    header = ("| model | weights | LUT tensors (bits) | flash before | flash after | saving | arena before | arena after | "
              "TFLM outputs | TFLM accuracy |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("cnn", "wide"):
        model, data = subject(name, workdir)
        inputs = load_model(MODELS[name](workdir).onnx_path).inputs
        assert data.calibration is not None and data.evaluation.labels is not None
        for clusters in (16, 4):
            clustered = Cluster(ClusterConfig(clusters=clusters))(model, data).model
            converted = convert(clustered, input_shapes={s.name: list(s.shape) for s in inputs})
            q = quantize(converted.tflite_bytes, "int8", calibration=list(data.calibration.feeds()), float_io=False)
            plain = inline_buffers(q.tflite_bytes)
            detail = Interpreter(model_content=plain).get_input_details()[0]
            scale, zero = detail["quantization"]
            feeds = [{k: np.clip(np.round(v / scale) + zero, -128, 127).astype(np.int8) for k, v in f.items()}
                     for f in data.evaluation.feeds()]
            lut = compression.compress_lut(plain)
            before, after = micro.run(plain, feeds)[0], micro.run(lut.tflite_bytes, feeds)[0]
            same = np.array_equal(before, after)
            acc = float(np.mean(after.reshape(len(after), -1).argmax(1) == data.evaluation.labels))
            bits = ", ".join(f"{t.name}:{t.bits}" for t in lut.tensors)
            arena = (micro.measure_arena(plain, feeds[0]), micro.measure_arena(lut.tflite_bytes, feeds[0]))
            lines.append(f"| {name} | cluster:{clusters} | {bits} | {len(plain)} | {len(lut.tflite_bytes)} | "
                         f"{len(plain) / len(lut.tflite_bytes):.2f}x | {arena[0]} | {arena[1]} | "
                         f"{'equal' if same else 'DIFFER'} on {len(feeds)} | {100 * acc:.2f}% |")
    return lines


def targets(rows: list[Row]) -> list[str]:
    def get(model: str, spec: str) -> Row | None:
        return next((r for r in rows if r.model == model and r.pipeline == spec), None)

    out = []
    checks = [
        ("Deep Compression >= 10x smaller, <= 1 pt", "wide", DEEP, lambda r, b: b.shipped / r.shipped >= 10),
        ("low-rank >= 1.5x fewer params, <= 1 pt", "wide", "lowrank:0.99", lambda r, b: b.params / r.params >= 1.5),
        ("structured pruning >= 1.8x fewer MACs and >= 1.3x faster, <= 1 pt", "mobilenet", f"{CHANNELS_MB},finetune",
         lambda r, b: b.macs / r.macs >= 1.8 and r.speedup >= 1.3),
        ("mixed precision within 1 pt where its int8 (per-channel) is not", "mobilenet", "mixed:30,entropy",
         lambda r, b: (p := get("mobilenet", "int8:per_channel=true,entropy")) is not None and b.accuracy - p.accuracy > 0.01),
    ]
    for label, model, spec, ok in checks:
        r, b = get(model, spec), get(model, "(fp32)")
        if r is None or b is None:
            out.append(f"SKIPPED {label}: {model} {spec} not run")
            continue
        drop = 100 * (b.accuracy - r.accuracy)
        good = ok(r, b) and drop <= 1.0
        out.append(f"{'PASS' if good else 'MISS'} {label}: {model} `{spec}`: {b.shipped / r.shipped:.2f}x bytes, "
                   f"{b.params / r.params:.2f}x params, {b.macs / max(r.macs, 1):.2f}x MACs, {r.speedup:.2f}x speed, "
                   f"{-drop:+.2f} pt")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn,wide,mobilenet")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgefleet-compress-bench"))
    parser.add_argument("--svg", type=Path, default=None)
    parser.add_argument("--no-tflm", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("edgefleet").setLevel(logging.WARNING)  # one line per pass is enough: ours
    rows: list[Row] = []
    for name in args.models.split(","):
        model, data = subject(name, args.workdir)
        mine = run_all(name, model, data)
        time_rows(mine, data, args.runs)
        rows += mine
    print(f"# {platform.machine()}, onnxruntime {ort.__version__}, 1 thread, median of {args.runs} interleaved rounds\n")
    print(table(rows))
    if args.svg is not None:
        plot(rows, args.svg)
        print(f"\nwrote {args.svg}")
    if not args.no_tflm:
        print()
        print("\n".join(tflm_section(args.workdir)))
    print()
    print("\n".join(targets(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
