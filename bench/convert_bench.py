"""Converter and quantization benchmark: where int8 TFLite bytes go, and LiteRT next to onnxruntime, fp32 and int8.

    nice .venv/bin/python bench/convert_bench.py [--runs 100] [--sections size,latency] [--models mobilenetv2,resnet18] [--workdir DIR]

Four sections (``--sections``), printed as Markdown tables:

- ``size``: for every model of the converter's set, the fp32 and full-integer int8 ``.tflite``
  (``tflite.convert`` then ``tflite.quantize(..., "int8")``: ai-edge-quantizer ``static_wi8_ai8``,
  per-channel weights, float inputs/outputs, buffers compacted) and where the int8 file's bytes go
  (``tflite.flatbuffer.size_breakdown``): int8 weights, int32 biases, float constants left,
  per-channel scales + int64 zero points, names, and the rest of the flatbuffer (tables, shapes,
  op codes, signature, alignment). Sizes do not depend on the calibration data, so the random-weight
  nets calibrate on 16 random inputs.
- ``latency``: per conv net, five variants side by side in one process: LiteRT (XNNPACK) fp32 and
  int8, onnxruntime (CPU) fp32, edgefleet's ``int8-static`` pass (QDQ, per-channel weights) and
  ``quantize_static`` with onnxruntime's defaults (per-tensor weights) on the same calibration
  samples, each on 1 and on 2 threads. Runs are interleaved (each round runs every variant once, in
  a rotating order) so load on the shared machine hits all variants alike, and onnxruntime's
  worker threads do not spin between runs (that would take a CPU from the variant run next); the
  median of ``--runs`` rounds after warm-up is reported (at most ``BIG_NET_RUNS`` for the full-size 224x224 MobileNetV2
  and ResNet-18, whose rounds take seconds). "vs fp32" is the median over rounds of a variant's
  time over the fp32 time of its runtime in the same round. Fidelity (top-1 agreement, SQNR) is against the fp32 ONNX model
  on held-out inputs: 450 held-out digits for the digits nets, 32 other random inputs otherwise.
  The digits CNN's rows also give accuracy on the labels.
- ``modes``: every ``tflite.quantize`` mode (fp16, dynamic, int8, int16x8, int4) of the digits MLP
  and CNN, calibrated on their calibration digits: size and fidelity against the ONNX model on the
  held-out digits (the table in docs/converter.md, "Quantization").
- ``kernels``: LiteRT fp32 and int8 of single conv layers (3x3, 1x1, depthwise) at 16 to 256
  channels, interleaved the same way: where XNNPACK's int8 kernels beat fp32 on this CPU and where not.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter

from edgefleet.compiler import calibration, fidelity, inference, model_zoo
from edgefleet.compiler.inference import Feed
from edgefleet.compiler.passes import PassData, StaticInt8, StaticInt8Config
from edgefleet.compiler.tflite import convert, flatbuffer
from edgefleet.compiler.tflite.quantize import MODES, evaluate, quantize

WARMUP = 10
RANDOM_CALIBRATION = 16
RANDOM_HELD_OUT = 32
BIG_NET_RUNS = 20


@dataclass(frozen=True)
class Subject:
    """A model to measure, with its calibration and held-out samples."""

    name: str
    model: onnx.ModelProto
    calib: calibration.Dataset
    held_out: calibration.Dataset
    input_shapes: dict[str, list[int]] | None = None
    max_runs: int | None = None
    """Fewer timed rounds than ``--runs`` for the 224x224 nets, whose rounds take seconds."""


@dataclass(frozen=True)
class Variant:
    name: str
    size: int
    run: Callable[[Feed], np.ndarray]
    """One inference: feed in, first output out (a view; copy to keep)."""
    made: str
    run_2_threads: Callable[[Feed], np.ndarray] | None = None


def _digits(make: Callable[[Path], model_zoo.ZooModel], workdir: Path) -> Subject:
    zoo = make(workdir)
    model = onnx.load(zoo.onnx_path)
    specs = convert(model).inputs
    return Subject(zoo.name, model, calibration.load_dataset(zoo.calibration_path, specs),
                   calibration.load_dataset(zoo.validation_path, specs))


def _random(name: str, model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None,
            max_runs: int | None = None) -> Subject:
    specs = convert(model, input_shapes=input_shapes).inputs
    return Subject(name, model, calibration.synthetic(specs, count=RANDOM_CALIBRATION, seed=0),
                   calibration.synthetic(specs, count=RANDOM_HELD_OUT, seed=1), input_shapes, max_runs)


def _ppocr(name: str) -> Subject:
    path, shape = model_zoo.rapidocr_model(name)
    model = onnx.load(str(path))
    return _random(name, model, {model.graph.input[0].name: shape})


def _litert(data: bytes, threads: int = 1) -> Callable[[Feed], np.ndarray]:
    it = Interpreter(model_content=data, num_threads=threads)
    it.allocate_tensors()
    (inp,) = it.get_input_details()
    out = it.get_output_details()[0]

    def run(feed: Feed) -> np.ndarray:
        # Feed, run and read back, as session.run does for onnxruntime.
        it.set_tensor(inp["index"], feed[inp["name"]])
        it.invoke()
        return it.get_tensor(out["index"])

    return run


def _ort(model: onnx.ModelProto, threads: int = 1) -> Callable[[Feed], np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # By default onnxruntime's idle worker threads spin after each run and hold a CPU. In interleaved
    # rounds that CPU is taken from the next variant: on 2 cores, LiteRT fp32 ResNet-18 run right
    # after a 2-thread onnxruntime session took 112 ms, against 54 ms after a non-spinning one.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, dict(feed))[0]


def _ort_defaults(model: onnx.ModelProto, calib: calibration.Dataset) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(list(calib.feeds()))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, src)
        quantize_static(str(src), str(dst), Reader())
        return onnx.load(str(dst))


def _timed(make: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    value = make()
    return value, time.perf_counter() - start


def _variants(s: Subject) -> list[Variant]:
    converted, t_convert = _timed(lambda: convert(s.model, input_shapes=s.input_shapes))
    q, t_quant = _timed(lambda: quantize(converted.tflite_bytes, "int8", calibration=list(s.calib.feeds())))
    ours, t_ours = _timed(lambda: StaticInt8(StaticInt8Config()).apply(s.model, PassData(evaluation=s.held_out, calibration=s.calib)).model)
    defaults, t_def = _timed(lambda: _ort_defaults(s.model, s.calib))
    return [
        Variant("LiteRT fp32 (edgefleet convert)", len(converted.tflite_bytes), _litert(converted.tflite_bytes),
                f"convert {1000 * t_convert:.0f} ms", _litert(converted.tflite_bytes, 2)),
        Variant("LiteRT int8 (ai-edge-quantizer static_wi8_ai8)", q.size_bytes, _litert(q.tflite_bytes),
                f"+ quantize {1000 * t_quant:.0f} ms", _litert(q.tflite_bytes, 2)),
        Variant("onnxruntime fp32", s.model.ByteSize(), _ort(s.model), "-", _ort(s.model, 2)),
        Variant("onnxruntime int8, edgefleet int8-static (QDQ, per-channel)", ours.ByteSize(), _ort(ours),
                f"quantize {1000 * t_ours:.0f} ms", _ort(ours, 2)),
        Variant("onnxruntime int8, quantize_static defaults (QDQ, per-tensor)", defaults.ByteSize(), _ort(defaults),
                f"quantize {1000 * t_def:.0f} ms", _ort(defaults, 2)),
    ]


def _interleaved(variants: list[Variant], feed: Feed, runs: int) -> list[float]:
    """Median milliseconds of one inference per variant, rounds interleaved in a rotating order."""
    return [statistics.median(t) / 1e6 for t in _rounds(variants, feed, runs)]


def _rounds(variants: list[Variant], feed: Feed, runs: int) -> list[list[int]]:
    """Nanoseconds of each variant's run in each round (``[variant][round]``), rounds interleaved in a rotating order."""
    for v in variants:
        for _ in range(WARMUP):
            v.run(feed)
    times: list[list[int]] = [[] for _ in variants]
    for r in range(runs):
        for k in range(len(variants)):
            i = (r + k) % len(variants)
            start = time.perf_counter_ns()
            variants[i].run(feed)
            times[i].append(time.perf_counter_ns() - start)
    return times


def _paired(times: list[int], base: list[int]) -> float:
    """Median over rounds of ``times / base`` in the same round.

    Steadier than a ratio of medians when the shared machine's load changes during the run: both
    runs of a round see about the same load."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def latency_table(s: Subject, runs: int) -> list[str]:
    """The five variants' fidelity and latency; 1-thread and 2-thread runs of every variant share the interleaved rounds."""
    variants = _variants(s)
    feeds = list(s.held_out.feeds())
    reference = inference.run_model(s.model, feeds)[0]
    runs = min(runs, s.max_runs or runs)
    two = [Variant(v.name, v.size, v.run_2_threads, v.made) for v in variants if v.run_2_threads is not None]
    times = _rounds(variants + two, feeds[0], runs)
    one_thread, two_threads = times[: len(variants)], times[len(variants) :]
    shape = list(next(iter(s.held_out.arrays.values())).shape[1:])
    data = f"{len(feeds)} held-out digits" if s.held_out.labels is not None else f"{len(feeds)} random inputs"
    lines = [
        f"#### {s.name}, input {shape} ({data}, {len(s.calib)} calibration samples; median of {runs} interleaved runs)",
        "",
        ("| variant | size (bytes) | top-1 agreement | SQNR dB | accuracy | latency, 1 thread (µs) | vs fp32, same runtime | "
         "latency, 2 threads (µs) | vs fp32, same runtime | time to make |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (v, t1, t2) in enumerate(zip(variants, one_thread, two_threads, strict=True)):
        out = np.stack([v.run(f).copy() for f in feeds]).astype(np.float32)
        f = fidelity.compare(["y"], [reference], [out], labels=s.held_out.labels)
        base = 0 if i < 2 else 2
        top1 = "-" if f.top1_agreement is None else f"{100 * f.top1_agreement:.2f}%"
        accuracy = "-" if f.accuracy is None else f"{100 * f.accuracy:.2f}%"
        sqnr = "exact" if f.sqnr_db is None else f"{f.sqnr_db:.1f}"
        lines.append(f"| {v.name} | {v.size:,} | {top1} | {sqnr} | {accuracy} | {statistics.median(t1) / 1e3:,.0f} | "
                     f"{_paired(t1, one_thread[base]):.2f}x | {statistics.median(t2) / 1e3:,.0f} | "
                     f"{_paired(t2, two_threads[base]):.2f}x | {v.made} |")
    return lines


def size_rows(s: Subject) -> str:
    fp32 = convert(s.model, input_shapes=s.input_shapes).tflite_bytes
    q = quantize(fp32, "int8", calibration=list(s.calib.feeds()))
    b = flatbuffer.size_breakdown(q.tflite_bytes)
    const_fp32 = flatbuffer.size_breakdown(fp32).constant_bytes
    other = b.constant_bytes - b.constants.get("INT8", 0) - b.constants.get("INT32", 0)
    return (f"| {s.name} | {len(fp32):,} | {q.size_bytes:,} | **{len(fp32) / q.size_bytes:.2f}x** | "
            f"{const_fp32 / b.constant_bytes:.2f}x | {b.constants.get('INT8', 0):,} | {b.constants.get('INT32', 0):,} | "
            f"{other:,} | {b.quantization_params:,} ({100 * b.quantization_params / b.total:.0f}%) | {b.names:,} | "
            f"{b.structure:,} | {len(fp32) / (b.total - b.quantization_params):.2f}x |")


def mode_rows(s: Subject) -> list[str]:
    """Every quantization mode of ``s`` (a digits model): size, how much smaller, fidelity on the held-out digits."""
    fp32 = convert(s.model, input_shapes=s.input_shapes).tflite_bytes
    names = [o.name for o in s.model.graph.output]
    held_out = list(s.held_out.feeds())
    reference = inference.run_model(s.model, held_out)
    const_fp32 = flatbuffer.size_breakdown(fp32).constant_bytes
    rows = []
    for mode in ["fp32", *MODES]:
        data = fp32 if mode == "fp32" else quantize(fp32, mode, calibration=list(s.calib.feeds())).tflite_bytes
        f = evaluate(reference, data, held_out, names)
        sqnr = f"{f.sqnr_db:.1f}" if f.sqnr_db is not None else "exact"
        rows.append(f"| {s.name} | {mode} | {len(data):,} | {len(fp32) / len(data):.2f}x | "
                    f"{const_fp32 / flatbuffer.size_breakdown(data).constant_bytes:.2f}x | "
                    f"{100 * (f.top1_agreement or 0):.2f}% | {sqnr} | {f.max_abs_error:.2g} |")
    return rows


MODES_HEADER = [
    "| model | mode | size (bytes) | smaller (file) | smaller (constants) | top-1 agreement | SQNR dB | max abs error |",
    "|---|---|---|---|---|---|---|---|",
]

SIZE_HEADER = [
    ("| model | fp32 bytes | int8 bytes | file ratio | constants ratio | int8 weights | int32 (biases, shapes) | "
     "other constants | scales + zero points (share of file) | names | tables, shapes, alignment | ratio without scales/zero points |"),
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]


def subjects(section: str, workdir: Path, models: list[str] | None = None) -> list[Subject]:
    """The section's models, or those whose name's first word is in ``models``."""
    return [s for s in _all_subjects(section, workdir) if not models or s.name.split()[0] in models]


def _all_subjects(section: str, workdir: Path) -> list[Subject]:
    digits = [_digits(model_zoo.digits_mlp, workdir), _digits(model_zoo.digits_cnn, workdir)]
    if section == "modes":
        return digits
    if section == "latency":
        return [*digits[1:],
                _random("mobilenetv2_block (size 128, width 32)", model_zoo.mobilenetv2_block(0, size=128, width=32)),
                _random("resnet_block (size 96, width 64)", model_zoo.resnet_block(0, size=96, width=64)),
                _random("yolo_detector (size 256)", model_zoo.yolo_detector(0, size=256)),
                _random("ds_cnn", model_zoo.ds_cnn(0)),
                _random("mobilenetv2 (width 1.0, size 224)", model_zoo.mobilenetv2(0), max_runs=BIG_NET_RUNS),
                _random("resnet18 (size 224)", model_zoo.resnet18(0), max_runs=BIG_NET_RUNS)]
    return [*digits, _digits(model_zoo.digits_mlp_wide, workdir),
            _random("mobilenetv2_block", model_zoo.mobilenetv2_block(0)),
            _random("mobilenetv2_block (width 64)", model_zoo.mobilenetv2_block(0, width=64)),
            _random("resnet_block", model_zoo.resnet_block(0)),
            _random("resnet_block (width 64, ResNet-18's first stage)", model_zoo.resnet_block(0, width=64)),
            _random("resnet_block (width 128)", model_zoo.resnet_block(0, width=128)),
            _random("ds_cnn", model_zoo.ds_cnn(0)), _random("yolo_detector", model_zoo.yolo_detector(0)),
            _random("mobilenetv2 (width 1.0, size 224)", model_zoo.mobilenetv2(0)), _random("resnet18 (size 224)", model_zoo.resnet18(0)),
            *(_ppocr(name) for name in model_zoo.RAPIDOCR_MODELS)]


def _layer(kind: str, channels: int, size: int) -> onnx.ModelProto:
    """One conv layer with a fused Relu on [1, C, size, size]: ``3x3``, ``1x1`` or ``depthwise`` (3x3, group C)."""
    rng = np.random.default_rng(0)
    k, group = (1, 1) if kind == "1x1" else (3, channels if kind == "depthwise" else 1)
    w = rng.standard_normal((channels, channels // group, k, k)) * np.sqrt(2 / (k * k * channels // group))
    nodes = [onnx.helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[k // 2] * 4, group=group),
             onnx.helper.make_node("Relu", ["c"], ["y"])]
    shape = [1, channels, size, size]
    graph = onnx.helper.make_graph(
        nodes, f"{kind}_{channels}", [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
        [onnx.numpy_helper.from_array(w.astype(np.float32), "w"),
         onnx.numpy_helper.from_array((0.1 * rng.standard_normal(channels)).astype(np.float32), "b")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def kernel_rows(runs: int, size: int = 28) -> list[str]:
    """LiteRT int8 / fp32 latency of single conv layers: how XNNPACK's int8 kernels scale with channels on this CPU."""
    lines = [f"| layer (input [1, C, {size}, {size}], fused Relu) | C | fp32 (µs) | int8 (µs) | int8 / fp32 |", "|---|---|---|---|---|"]
    for kind in ("3x3", "1x1", "depthwise"):
        for channels in (16, 64, 128, 256):
            s = _random(f"{kind}", _layer(kind, channels, size))
            fp32 = convert(s.model).tflite_bytes
            q = quantize(fp32, "int8", calibration=list(s.calib.feeds()))
            variants = [Variant("fp32", len(fp32), _litert(fp32), ""), Variant("int8", q.size_bytes, _litert(q.tflite_bytes), "")]
            f, i = _interleaved(variants, next(s.held_out.feeds()), runs)
            lines.append(f"| {kind} conv | {channels} | {1000 * f:,.0f} | {1000 * i:,.0f} | {i / f:.2f}x |")
    return lines


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="interleaved timed rounds per model (median reported)")
    parser.add_argument("--sections", default="size,kernels,latency", help="comma-separated: size, modes, kernels, latency")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edgefleet-bench")
    parser.add_argument("--models", default="", help="comma-separated model names as the tables start them (e.g. "
                        "mobilenetv2,resnet18): only these in the size and latency sections; all by default")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer warns about pre-processing on every call
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs (nproc), {_cpu_model()}; "
          f"ai-edge-litert {md.version('ai-edge-litert')}, ai-edge-quantizer {md.version('ai-edge-quantizer')}, "
          f"onnxruntime {ort.__version__}")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "size" in sections:
        print("\n### Full-integer int8 TFLite: file size and where the bytes go\n")
        print("\n".join(SIZE_HEADER))
        for s in subjects("size", args.workdir, models):
            print(size_rows(s), flush=True)
    if "modes" in sections:
        print("\n### Every quantization mode on the digits models (docs/converter.md)\n")
        print("\n".join(MODES_HEADER))
        for s in subjects("modes", args.workdir, models):
            print("\n".join(mode_rows(s)), flush=True)
    if "kernels" in sections:
        print("\n### LiteRT int8 vs fp32 per conv layer (XNNPACK, 1 thread)\n")
        print("\n".join(kernel_rows(args.runs)))
    if "latency" in sections:
        print("\n### Latency side by side: LiteRT and onnxruntime, fp32 and int8\n")
        for s in subjects("latency", args.workdir, models):
            print("\n".join(latency_table(s, args.runs)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
