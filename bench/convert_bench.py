"""Converter and quantization benchmark: LiteRT fp32/int8 next to onnxruntime fp32/int8, one table per model.

    .venv/bin/python bench/convert_bench.py [--runs 200] [--workdir /tmp/edgefleet-bench]

For the digits MLP and CNN (``model_zoo``), on the 450 held-out digits, with the 200 calibration
digits for every int8 variant:

- LiteRT (XNNPACK, 1 thread): fp32 ``.tflite`` from ``tflite.convert``; int8 from ``tflite.quantize``
  (ai-edge-quantizer ``static_wi8_ai8``, float inputs/outputs);
- onnxruntime (CPU, 1 thread): the fp32 ONNX; edgefleet's ``int8-static`` pass (QDQ, per-channel
  weights, the compiler's settings); and ``quantize_static`` with onnxruntime's defaults
  (per-tensor weights) on the same calibration data.

Columns: file size, top-1 agreement and SQNR against the fp32 ONNX model, accuracy on the labels,
median latency of one inference over ``--runs`` runs (after 20 warm-up runs), and the time to
make the file (conversion, quantization including calibration). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter

from edgefleet.compiler import calibration, fidelity, inference, model_zoo
from edgefleet.compiler.passes import PassData, StaticInt8, StaticInt8Config
from edgefleet.compiler.tflite import convert
from edgefleet.compiler.tflite.quantize import quantize

WARMUP = 20


def _median_ms(run: Callable[[], object], runs: int) -> float:
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e6


def _litert(data: bytes, feeds: Sequence[dict[str, np.ndarray]], runs: int) -> tuple[np.ndarray, float]:
    it = Interpreter(model_content=data, num_threads=1)
    it.allocate_tensors()
    (inp,) = it.get_input_details()
    (out,) = it.get_output_details()
    outputs = []
    for feed in feeds:
        it.set_tensor(inp["index"], feed[inp["name"]])
        it.invoke()
        outputs.append(it.get_tensor(out["index"]).copy())
    first = feeds[0][inp["name"]]

    def once() -> np.ndarray:
        # Feed, run and read back, as session.run does for onnxruntime.
        it.set_tensor(inp["index"], first)
        it.invoke()
        return it.get_tensor(out["index"])

    return np.stack(outputs), _median_ms(once, runs)


def _ort(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], runs: int) -> tuple[np.ndarray, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = np.stack([session.run(None, dict(f))[0] for f in feeds])
    first = dict(feeds[0])
    return outputs, _median_ms(lambda: session.run(None, first), runs)


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


def bench(zoo: model_zoo.ZooModel, runs: int) -> list[str]:
    model = onnx.load(zoo.onnx_path)
    held_out_specs = convert(model).inputs
    calib = calibration.load_dataset(zoo.calibration_path, held_out_specs)
    held_out = calibration.load_dataset(zoo.validation_path, held_out_specs)
    feeds = list(held_out.feeds())
    reference = inference.run_model(model, feeds)[0]
    rows: list[tuple[str, int, np.ndarray, float, str]] = []

    start = time.perf_counter()
    converted = convert(model)
    t_convert = time.perf_counter() - start
    out, ms = _litert(converted.tflite_bytes, feeds, runs)
    rows.append(("LiteRT fp32 (edgefleet convert)", len(converted.tflite_bytes), out, ms, f"convert {1000 * t_convert:.0f} ms"))

    start = time.perf_counter()
    q = quantize(converted.tflite_bytes, "int8", calibration=list(calib.feeds()))
    t_quant = time.perf_counter() - start
    out, ms = _litert(q.tflite_bytes, feeds, runs)
    rows.append(("LiteRT int8 (ai-edge-quantizer static_wi8_ai8)", q.size_bytes, out, ms,
                 f"convert {1000 * t_convert:.0f} ms + quantize {1000 * t_quant:.0f} ms"))

    out, ms = _ort(model, feeds, runs)
    rows.append(("onnxruntime fp32", model.ByteSize(), out, ms, "-"))

    start = time.perf_counter()
    ours = StaticInt8(StaticInt8Config()).apply(model, PassData(evaluation=held_out, calibration=calib)).model
    t_ours = time.perf_counter() - start
    out, ms = _ort(ours, feeds, runs)
    rows.append(("onnxruntime int8, edgefleet int8-static (QDQ, per-channel)", ours.ByteSize(), out, ms, f"quantize {1000 * t_ours:.0f} ms"))

    start = time.perf_counter()
    defaults = _ort_defaults(model, calib)
    t_def = time.perf_counter() - start
    out, ms = _ort(defaults, feeds, runs)
    rows.append(("onnxruntime int8, quantize_static defaults (per-tensor)", defaults.ByteSize(), out, ms, f"quantize {1000 * t_def:.0f} ms"))

    lines = [
        f"### {zoo.name} ({len(feeds)} held-out digits, {len(calib)} calibration digits, median of {runs} runs, 1 thread)",
        "",
        "| variant | size (bytes) | top-1 agreement | SQNR dB | accuracy | latency (µs) | time to make |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, size, out, ms, made in rows:
        f = fidelity.compare(["p"], [reference], [out.astype(np.float32)], labels=held_out.labels)
        sqnr = "exact" if f.sqnr_db is None else f"{f.sqnr_db:.1f}"
        lines.append(f"| {name} | {size:,} | {100 * (f.top1_agreement or 0):.2f}% | {sqnr} | "
                     f"{100 * (f.accuracy or 0):.2f}% | {1000 * ms:.1f} | {made} |")
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
    parser.add_argument("--runs", type=int, default=200, help="timed runs per variant (median reported)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edgefleet-bench")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer warns about pre-processing on every call
    import importlib.metadata as md

    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs (nproc), {_cpu_model()}; "
          f"ai-edge-litert {md.version('ai-edge-litert')}, ai-edge-quantizer {md.version('ai-edge-quantizer')}, "
          f"onnxruntime {ort.__version__}")
    for make in (model_zoo.digits_mlp, model_zoo.digits_cnn):
        print()
        print("\n".join(bench(make(args.workdir), args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
