"""Compiler benchmark: does ``edgefleet compile`` choose well per profile, and is its cost model right?

    nice .venv/bin/python bench/compile_bench.py [--sections host,cost,choose,big] [--workdir DIR] [--runs 200]

Sections, printed as Markdown tables for docs/benchmarks.md ("Compiler: choosing per profile"):

- ``host``: the figures behind the generic-linux-x86_64 profile's ``call_overhead_us``,
  ``op_overhead_us`` and ``fp32_gflops`` on this machine: an InferenceSession.run of one tiny
  operator, of 101 tiny operators, and of a 64x512x512 MatMul.
- ``cost``: the cost model's latency estimate for the generic profile against onnxruntime's
  measured median on this machine, per model of the model set, fp32 and int8-static (QDQ,
  calibrated on 16 random inputs: latency does not depend on the calibration). One session at a
  time; the smallest of 3 medians is kept, so load from other processes on this shared machine
  inflates it least. Target: every ratio within 0.7-1.3 (+-30%).
- ``choose``: ``compile_model`` with the search on the digits MLP for raspberry-pi-4,
  android-flagship, nucleo-l4r5zi and generic-linux-x86_64, ``--max-drop 1%``, objective latency;
  the validation digits are split in two: one half is the ``--data`` the search chooses on, the other
  (never seen by the compiler) checks the chosen packages' accuracy drop. Per profile: the choice,
  whether it is on the Pareto front of (estimated latency, measured fidelity loss) among candidates
  that run there, and for generic-linux-x86_64 also on the front of *measured* latency on this host;
  the microcontroller's flash and arena as measured in TFLite Micro against the board's.
- ``big``: the 3.25 M-parameter digits MLP (``model_zoo.digits_mlp_3m``) compiled for
  raspberry-pi-4, android-flagship and nucleo-l4r5zi with ``--time-budget 150``; wall time of the
  whole compile (target < 5 min on this 2-core machine) and what each profile got.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compiler import cost_model, model_zoo
from edgefleet.compiler.calibration import Dataset
from edgefleet.compiler.compile import CompileResult, compile_model
from edgefleet.compiler.errors import CompileError
from edgefleet.compiler.passes import PassData, StaticInt8
from edgefleet.compiler.planner import Budget, Verdict, fidelity_loss
from edgefleet.compiler.search import SearchOptions
from edgefleet.hardware_profiles import load_profile
from edgefleet.hardware_profiles.schema import NumberFormat

log = logging.getLogger("compile_bench")
GENERIC = "generic-linux-x86_64"
PROFILES = ["raspberry-pi-4", "android-flagship", "nucleo-l4r5zi", GENERIC]


def session(model: onnx.ModelProto) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32) for i in sess.get_inputs()}
    return sess, feeds


def measured_ms(models: dict[str, onnx.ModelProto], runs: int, repeats: int = 3) -> dict[str, float]:
    """Median latency per model, one session at a time (onnxruntime's idle threads spin, so sessions
    measured side by side slow each other down); the smallest of ``repeats`` medians."""
    best: dict[str, float] = {}
    for k, m in models.items():
        sess, feeds = session(m)
        for _ in range(20):
            sess.run(None, feeds)
        for _ in range(repeats):
            ts = []
            for _ in range(runs):
                t = time.perf_counter()
                sess.run(None, feeds)
                ts.append(time.perf_counter() - t)
            best[k] = min(best.get(k, float("inf")), statistics.median(ts) * 1e3)
        del sess
    return best


def section_host(runs: int) -> None:
    def chain(n: int) -> onnx.ModelProto:
        nodes = [helper.make_node("Relu" if i % 2 else "Neg", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, [1, 16])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    w = numpy_helper.from_array((np.random.default_rng(0).random((512, 512)) / 512).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 512])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 512])], [w])
    matmul = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    ms = measured_ms({"1 op": chain(1), "101 ops": chain(101), "matmul": matmul}, runs)
    per_op_us = (ms["101 ops"] - ms["1 op"]) / 100 * 1e3
    print("## host: the generic profile's overheads and throughput, measured here\n")
    print("| figure | measured | generic-linux-x86_64.yaml |\n|---|---|---|")
    p = load_profile(GENERIC).throughput
    print(f"| call overhead (1 tiny op, us) | {ms['1 op'] * 1e3 - per_op_us:.1f} | {p.call_overhead_us} |")
    print(f"| per-operator overhead (us) | {per_op_us:.2f} | {p.op_overhead_us} |")
    print(f"| 64x512x512 MatMul fp32 (GFLOPS) | {2 * 64 * 512 * 512 / ms['matmul'] / 1e6:.0f} | {p.fp32_gflops} |\n")


def model_set(workdir: Path) -> dict[str, onnx.ModelProto]:
    return {
        "digits_mlp": onnx.load(model_zoo.digits_mlp(workdir / "mlp").onnx_path),
        "digits_cnn": onnx.load(model_zoo.digits_cnn(workdir / "cnn").onnx_path),
        "digits_mlp_wide": onnx.load(model_zoo.digits_mlp_wide(workdir / "wide").onnx_path),
        "digits_mlp_3m": onnx.load(model_zoo.digits_mlp_3m(workdir / "m3").onnx_path),
        "digits_mobilenet": onnx.load(model_zoo.digits_mobilenet(workdir / "mobilenet").onnx_path),
        "mobilenetv2_block": model_zoo.mobilenetv2_block(),
        "resnet_block": model_zoo.resnet_block(),
        "ds_cnn": model_zoo.ds_cnn(),
        "yolo_detector": model_zoo.yolo_detector(),
    }


def section_cost(workdir: Path, runs: int) -> None:
    generic = load_profile(GENERIC)
    models: dict[str, onnx.ModelProto] = {}
    estimates: dict[str, float] = {}
    for name, model in model_set(workdir).items():
        graph = cost_model.analyse(model)
        models[f"{name} fp32"] = model
        estimates[f"{name} fp32"] = cost_model.estimate(graph, generic, NumberFormat.FP32).latency_ms
        rng = np.random.default_rng(0)
        samples = Dataset(arrays={i.name: rng.random([16, *[d.dim_value or 1 for d in i.type.tensor_type.shape.dim]]).astype(np.float32)
                                  for i in model.graph.input})
        models[f"{name} int8-static"] = StaticInt8()(model, PassData(evaluation=samples, calibration=samples)).model
        estimates[f"{name} int8-static"] = cost_model.estimate(graph, generic, NumberFormat.INT8).latency_ms
    measured = measured_ms(models, runs)
    print("## cost: estimated vs measured latency on generic-linux-x86_64 (onnxruntime, this host)\n")
    print("| model | MACs | estimated ms | measured ms | measured / estimated | within +-30% |\n|---|---|---|---|---|---|")
    ratios = []
    for key, model in models.items():
        ratio = measured[key] / estimates[key]
        ratios.append(ratio)
        macs = cost_model.analyse(model).macs if key.endswith("fp32") else ""
        print(f"| {key} | {macs} | {estimates[key]:.4f} | {measured[key]:.4f} | {ratio:.2f} | {'yes' if 0.7 <= ratio <= 1.3 else 'NO'} |")
    inside = sum(0.7 <= r <= 1.3 for r in ratios)
    print(f"\n{inside} of {len(ratios)} within +-30%; median ratio {statistics.median(ratios):.2f}, "
          f"range {min(ratios):.2f}-{max(ratios):.2f}\n")


def split_validation(zoo: model_zoo.ZooModel, workdir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """(the half the search sees, the half kept back) of the zoo model's validation digits."""
    with np.load(zoo.validation_path) as z:
        x, y = z["input"], z["labels"]
    order = np.random.default_rng(1).permutation(len(x))
    seen, kept = order[: len(x) // 2], order[len(x) // 2:]
    path = workdir / "search-half.npz"
    np.savez(path, input=x[seen], labels=y[seen])
    return path, {"input": x[kept], "labels": y[kept]}


def kept_back_accuracy(result: CompileResult, kept: dict[str, np.ndarray]) -> float | None:
    """Accuracy of the packaged model on the kept-back half (onnxruntime or LiteRT packages)."""
    with zipfile.ZipFile(result.package_path) as z:
        model_bytes = z.read(result.manifest.model_file)
    feeds = [{"input": row[None, :]} for row in kept["input"]]
    if result.manifest.model_file.endswith(".onnx"):
        sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        outs = np.stack([sess.run(None, f)[0] for f in feeds])
    elif result.runtime == "litert":
        from edgefleet.compiler.tflite.verify import run_tflite

        outs = next(iter(run_tflite(model_bytes, feeds).values()))
    else:
        return None
    return float(np.mean(outs.reshape(len(feeds), -1).argmax(axis=1) == kept["labels"]))


def on_front(verdicts: list[Verdict], chosen: Verdict, latency: dict[str, float]) -> bool:
    """Whether no runnable candidate beats ``chosen`` on both ``latency`` and fidelity loss."""
    def point(v: Verdict) -> tuple[float, float]:
        return latency[v.candidate.scheme], fidelity_loss(v.candidate.fidelity)

    c = point(chosen)
    return not any(point(v)[0] <= c[0] and point(v)[1] <= c[1] and point(v) != c
                   for v in verdicts if v.candidate.scheme in latency and not any(
                       m in p for p in v.problems for m in (" RAM", " flash", " storage", "does not run", "cannot carry")))


def section_choose(workdir: Path, key: Path, budget_s: float, runs: int) -> None:
    zoo = model_zoo.digits_mlp(workdir / "mlp")
    data, kept = split_validation(zoo, workdir)
    start = time.perf_counter()
    results = compile_model(zoo.onnx_path, PROFILES, calibration=zoo.calibration_path, data=data, out_dir=workdir / "choose",
                            key_path=key, name="digits", budget=Budget(max_drop=0.01), objective="latency",
                            search=SearchOptions(time_budget_s=budget_s, cache_dir=workdir / "cache"), plot=True)
    seconds = time.perf_counter() - start
    reference_accuracy = kept_back_accuracy_reference(zoo, kept)
    print(f"## choose: digits MLP, --max-drop 1%, objective latency, search budget {budget_s:g} s ({seconds:.0f} s wall)\n")
    print("| profile | runtime | chosen | candidates | est. ms | size | accuracy drop (search half) | accuracy drop (kept-back half) "
          "| on estimated front | on measured front (this host) |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        plan = r.plan
        chosen = next(v for v in plan.verdicts if v.candidate is plan.chosen)
        est = {v.candidate.scheme: v.estimate.latency_ms for v in plan.verdicts if v.estimate}
        f = chosen.candidate.fidelity
        search_drop = (f.reference_accuracy or 0) - (f.accuracy or 0)
        acc = kept_back_accuracy(r, kept)
        kept_drop = f"{100 * (reference_accuracy - acc):.2f}%" if acc is not None else "n/a (TFLM: see flash/arena)"
        measured_front = "-"
        if r.profile == GENERIC:
            measured = measured_latencies(workdir / "choose", plan, runs)
            measured_front = "yes" if on_front(list(plan.verdicts), chosen, measured) else "NO"
        print(f"| {r.profile} | {r.runtime} | {r.choice} | {len(plan.verdicts)} | {chosen.estimate.latency_ms:.4f} | "
              f"{r.size_bytes} | {100 * search_drop:.2f}% | {kept_drop} | {'yes' if on_front(list(plan.verdicts), chosen, est) else 'NO'} "
              f"| {measured_front} |")
    for r in results:
        if r.runtime == "tflm":
            m = r.manifest.metrics
            print(f"\n{r.profile}: flash {m['flash_bytes']} of {m['flash_available_bytes']} bytes, TFLM tensor arena "
                  f"{m['tflm_arena_bytes']} of {m['ram_available_bytes']} bytes RAM (measured in TFLite Micro)")
    print()
    for r in results:
        print(f"- **{r.profile}**: {r.plan.reason.split('. ')[0]}.")
    print()


def kept_back_accuracy_reference(zoo: model_zoo.ZooModel, kept: dict[str, np.ndarray]) -> float:
    sess = ort.InferenceSession(str(zoo.onnx_path), providers=["CPUExecutionProvider"])
    outs = np.stack([sess.run(None, {"input": row[None, :]})[0] for row in kept["input"]])
    return float(np.mean(outs.reshape(len(outs), -1).argmax(axis=1) == kept["labels"]))


def measured_latencies(out: Path, plan: Any, runs: int) -> dict[str, float]:
    """Latency on this host of every candidate of ``plan``, rebuilt from the config its row records."""
    from edgefleet.compiler.calibration import load_dataset
    from edgefleet.compiler.onnx_model import load_model
    from edgefleet.compiler.passes import build_pass

    zoo = model_zoo.digits_mlp(out.parent / "mlp")
    loaded = load_model(zoo.onnx_path)
    calib = load_dataset(zoo.calibration_path, loaded.inputs)
    data = PassData(evaluation=dataclasses.replace(calib, arrays={k: v[:8] for k, v in calib.arrays.items()}), calibration=calib)
    models: dict[str, onnx.ModelProto] = {}
    for v in plan.verdicts:
        config = v.candidate.config
        steps = config.get("pipeline", [config])
        model = loaded.model
        try:
            for step in steps:
                with contextlib.redirect_stdout(sys.stderr):  # onnxruntime's calibrators print progress
                    model = build_pass(step)(model, data).model
        except (CompileError, ValueError) as exc:
            log.warning("%s: not rebuilt (%s)", v.candidate.scheme, exc)
            continue
        models[v.candidate.scheme] = model
    return measured_ms(models, max(20, runs // 4), repeats=2)


def section_big(workdir: Path, key: Path, budget_s: float) -> None:
    zoo = model_zoo.digits_mlp_3m(workdir / "m3")
    params = sum(int(np.prod(t.dims)) for t in onnx.load(zoo.onnx_path).graph.initializer)
    start = time.perf_counter()
    results = compile_model(zoo.onnx_path, ["raspberry-pi-4", "android-flagship", "nucleo-l4r5zi"],
                            calibration=zoo.calibration_path, data=zoo.validation_path, out_dir=workdir / "big", key_path=key,
                            name="digits3m", budget=Budget(max_drop=0.01), objective="latency", best_effort=True,
                            search=SearchOptions(time_budget_s=budget_s), plot=True)
    seconds = time.perf_counter() - start
    print(f"## big: {params / 1e6:.2f} M-parameter digits MLP, 3 profiles, search budget {budget_s:g} s: "
          f"{seconds:.0f} s wall ({'within' if seconds < 300 else 'OVER'} 5 min)\n")
    print("| profile | chosen | size | fits | est. ms | candidates measured | best effort |\n|---|---|---|---|---|---|---|")
    for r in results:
        chosen = next(v for v in r.plan.verdicts if v.candidate is r.plan.chosen)
        fits = "yes" if chosen.feasible else "; ".join(chosen.problems)
        print(f"| {r.profile} | {r.choice} | {r.size_bytes} | {fits} | {chosen.estimate.latency_ms:.3f} | {len(r.plan.verdicts)} "
              f"| {r.plan.best_effort} |")
    print(f"\nsearch: {results[0].manifest.report['search']}\n")
    for r in results:
        print(f"- **{r.profile}**: {r.plan.reason.split('. ')[0]}.")
    print()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="host,cost,choose,big")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--choose-budget", type=float, default=60)
    parser.add_argument("--big-budget", type=float, default=150)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="compile-bench-"))
    from edgefleet.agent import keys

    key = workdir / "keys" / "signing.key"
    if not key.exists():
        keys.generate(key)
    sections = args.sections.split(",")
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}, workdir {workdir}\n")
    if "host" in sections:
        section_host(args.runs)
    if "cost" in sections:
        section_cost(workdir, args.runs)
    if "choose" in sections:
        section_choose(workdir, key, args.choose_budget, args.runs)
    if "big" in sections:
        section_big(workdir, key, args.big_budget)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
