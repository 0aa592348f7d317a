"""The search builds and measures candidates for real, prunes dominated ones, caches, and respects its budget;
``edgefleet compile`` with the search's flags chooses per profile and says why."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefleet.agent.package import read_manifest
from edgefleet.compiler import calibration, inference
from edgefleet.compiler.cli import compile_command
from edgefleet.compiler.compile import compile_model
from edgefleet.compiler.errors import NoCandidateFits
from edgefleet.compiler.onnx_model import load_model
from edgefleet.compiler.passes import PASSES, LowRankConfig, PassData, StaticInt8Config
from edgefleet.compiler.planner import Budget
from edgefleet.compiler.search import Point, SearchOptions, explore, structural_grid
from edgefleet.hardware_profiles import load_profile
from edgefleet.hardware_profiles.schema import NumberFormat, Runtime


def test_a_point_is_named_by_its_passes_and_settings_and_records_the_pipeline() -> None:
    plain = Point((), StaticInt8Config())
    assert plain.name == "int8-static" and plain.to_dict() == StaticInt8Config().to_dict()
    p = Point((LowRankConfig(energy=0.8),), StaticInt8Config(calibrate_method="percentile"))
    assert p.name == "lowrank(energy=0.8)+int8-static(calibrate_method=percentile)"
    d = p.to_dict()
    assert d["scheme"] == p.name and d["number_format"] == "int8"
    assert [s["scheme"] for s in d["pipeline"]] == ["lowrank", "int8-static"]


def test_the_structural_grid_comes_from_the_pass_registry() -> None:
    schemes = {steps[0].scheme for steps in structural_grid()}
    float_passes = {s for s, p in PASSES.items() if s != "fp32" and p.config_type.number_format is NumberFormat.FP32}
    assert schemes == float_passes and {"prune", "channel-prune", "lowrank", "cluster"} <= schemes


@pytest.fixture(scope="module")
def pieces(digits_mlp):  # type: ignore[no-untyped-def]
    loaded = load_model(digits_mlp.onnx_path)
    calib = calibration.load_dataset(digits_mlp.calibration_path, loaded.inputs)
    held = calibration.load_dataset(digits_mlp.validation_path, loaded.inputs)
    # 100 held-out samples keep the grid quick; the compile tests below use all 450.
    held = dataclasses.replace(held, arrays={k: v[:100] for k, v in held.arrays.items()},
                               labels=None if held.labels is None else held.labels[:100])
    reference = tuple(inference.run_model(loaded.model, list(held.feeds())))
    return loaded, PassData(evaluation=held, calibration=calib, reference=reference)


def test_the_grid_measures_every_point_once_and_the_cache_answers_the_second_run(pieces, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    loaded, data = pieces
    pi = load_profile("raspberry-pi-4")
    served = {Runtime.ONNXRUNTIME: [(pi, frozenset({NumberFormat.FP32, NumberFormat.INT8}))]}
    options = SearchOptions(time_budget_s=600, cache_dir=tmp_path / "cache", grid_limit=10_000)
    first = explore(loaded, data, served, options=options, budget=Budget())
    measured = first.measured[Runtime.ONNXRUNTIME]
    assert {"fp32", "int8-dynamic", "int8-static"} <= set(measured)
    assert any(name.startswith("channel-prune(ratio=0.25)+") for name in measured)
    assert first.log["modes"]["onnxruntime"].startswith("grid")
    # Pruning and clustering leave the dense model's cost as it was (dense kernels), so their int8
    # twins, which the unpruned int8 candidate matches on every estimate and which meets the budget, are not built.
    assert first.skipped["prune(sparsity=0.5)+int8-static"].startswith("dominated before building: int8-")
    for m in measured.values():
        assert m.candidate.graph is not None and m.candidate.fidelity.samples == 100
    second = explore(loaded, data, served, options=options, budget=Budget())
    assert second.log["built"] == 0 and second.log["cache_hits"] == first.log["built"] + first.log["cache_hits"]
    again = second.measured[Runtime.ONNXRUNTIME]
    assert set(again) == set(measured)
    name = next(n for n in measured if n.startswith("channel-prune"))
    assert again[name].candidate == measured[name].candidate and again[name].artifact is None


def test_a_spent_time_budget_still_measures_the_formats_and_says_what_it_skipped(pieces) -> None:  # type: ignore[no-untyped-def]
    loaded, data = pieces
    pi = load_profile("raspberry-pi-4")
    got = explore(loaded, data, {Runtime.ONNXRUNTIME: [(pi, frozenset(NumberFormat))]},
                  options=SearchOptions(time_budget_s=0, grid_limit=10_000), budget=Budget())
    assert all("+" not in name for name in got.measured[Runtime.ONNXRUNTIME])
    assert any(why == "time budget spent" for why in got.skipped.values())


def test_a_large_space_is_searched_with_optuna(pieces) -> None:  # type: ignore[no-untyped-def]
    loaded, data = pieces
    pi = load_profile("raspberry-pi-4")
    got = explore(loaded, data, {Runtime.ONNXRUNTIME: [(pi, frozenset(NumberFormat))]},
                  options=SearchOptions(time_budget_s=8, grid_limit=1), budget=Budget())
    assert got.log["modes"]["onnxruntime"].startswith("optuna")


@pytest.fixture(scope="module")
def compiled(digits_mlp, signing_key, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("searched")
    result = CliRunner().invoke(compile_command, [
        str(digits_mlp.onnx_path), "--profile", "raspberry-pi-4", "--profile", "nucleo-l4r5zi",
        "--calibration", str(digits_mlp.calibration_path), "--data", str(digits_mlp.validation_path),
        "--max-drop", "1%", "--objective", "latency", "--time-budget", "20", "--explain", "--json",
        "--cache", str(out / "cache"), "--key", str(signing_key[0]), "-o", str(out),
    ])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)  # stderr has the calibrators' progress


def test_each_profile_gets_a_package_whose_manifest_carries_the_table_estimate_and_plot(compiled) -> None:  # type: ignore[no-untyped-def]
    out, payload = compiled
    by_profile = {p["profile"]: p for p in payload["packages"]}
    assert set(by_profile) == {"raspberry-pi-4", "nucleo-l4r5zi"}
    for package in by_profile.values():
        report = read_manifest(Path(package["package"])).report
        assert report["objective"] == "latency" and report["cost_estimate"]["latency_ms"] > 0
        rows = {r["scheme"]: r for r in report["candidates"]}
        chosen = rows[report["chosen"]]
        assert chosen["chosen"] and chosen["pareto"] and chosen["feasible"]
        # The choice has the lowest estimated latency among the feasible candidates.
        assert chosen["estimated_latency_ms"] == min(r["estimated_latency_ms"] for r in rows.values() if r["feasible"])
        # --max-drop 1% is honoured on the labelled held-out data.
        assert chosen["reference_accuracy"] - chosen["accuracy"] <= 0.01
        svg = out / report["pareto_plot"]
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
        assert "lowest estimated latency" in report["reason"]
    assert by_profile["nucleo-l4r5zi"]["runtime"] == "tflm" and by_profile["raspberry-pi-4"]["runtime"] == "onnxruntime"
    assert by_profile["raspberry-pi-4"]["search"]["modes"]["onnxruntime"]


def test_an_impossible_size_limit_says_by_how_much_and_best_effort_ships_the_closest(digits_mlp, signing_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    budget = Budget(max_size_bytes=2048)
    kwargs = {"calibration": digits_mlp.calibration_path, "evaluation": digits_mlp.validation_path,
              "key_path": signing_key[0], "budget": budget, "search": SearchOptions(time_budget_s=0), "objective": "size"}
    with pytest.raises(NoCandidateFits) as info:
        compile_model(digits_mlp.onnx_path, ["raspberry-pi-4"], out_dir=tmp_path / "a", **kwargs)  # type: ignore[arg-type]
    text = " ".join(str(info.value).split())  # the reason is wrapped at 100 columns wherever the figures put the break
    assert "Smallest: int8-dynamic at" in text and "over --max-size-kb" in text
    assert not (tmp_path / "a").exists()
    (result,) = compile_model(digits_mlp.onnx_path, ["raspberry-pi-4"], out_dir=tmp_path / "b", best_effort=True,
                              **kwargs)  # type: ignore[arg-type]
    assert result.plan.best_effort and result.choice == "int8-dynamic"
    assert result.manifest.report["best_effort"] and result.manifest.report["reason"].startswith("Best effort")


def test_an_impossible_latency_limit_says_by_how_much_and_a_loose_one_is_met(digits_mlp, signing_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    kwargs = {"calibration": digits_mlp.calibration_path, "evaluation": digits_mlp.validation_path,
              "key_path": signing_key[0], "search": SearchOptions(time_budget_s=0)}
    with pytest.raises(NoCandidateFits) as info:
        compile_model(digits_mlp.onnx_path, ["raspberry-pi-4"], out_dir=tmp_path / "a",
                      budget=Budget(max_latency_ms=1e-6), **kwargs)  # type: ignore[arg-type]
    text = " ".join(str(info.value).split())
    assert "Fastest:" in text and "ms over --max-latency-ms" in text
    assert "estimated latency" in text and "> --max-latency 1e-06 ms" in text
    assert not (tmp_path / "a").exists()
    (result,) = compile_model(digits_mlp.onnx_path, ["raspberry-pi-4"], out_dir=tmp_path / "b",
                              budget=Budget(max_latency_ms=10.0), **kwargs)  # type: ignore[arg-type]
    chosen = next(v for v in result.plan.verdicts if v.candidate.scheme == result.choice)
    assert chosen.estimate is not None and chosen.estimate.latency_ms <= 10.0


def test_labels_in_a_separate_file_add_accuracy(digits_mlp, signing_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with np.load(digits_mlp.validation_path) as z:
        np.savez(tmp_path / "val.npz", input=z["input"])
        np.save(tmp_path / "labels.npy", z["labels"])
    result = CliRunner().invoke(compile_command, [
        str(digits_mlp.onnx_path), "--profile", "raspberry-pi-4", "--data", str(tmp_path / "val.npz"),
        "--labels", str(tmp_path / "labels.npy"), "--time-budget", "0", "--cache", str(tmp_path / "cache"), "--key", str(signing_key[0]),
        "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    (package,) = json.loads(result.stdout)["packages"]
    assert all(row["accuracy"] is not None for row in package["candidates"])
    bad = CliRunner().invoke(compile_command, [str(digits_mlp.onnx_path), "--profile", "raspberry-pi-4", "--max-drop", "lots",
                                               "--key", str(signing_key[0]), "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "'lots' is not a percentage" in bad.output


def test_measure_on_fleet_benchmarks_the_best_candidates_on_a_real_agent(digits_mlp, signing_key, broker_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real agent of the profile measures the candidates in interleaved rounds; the choice uses the measured latency."""
    import uuid

    from conftest import AgentProcess, Watcher, clear_retained

    from edgefleet.agent import topics
    from edgefleet.agent.transport import BrokerURL
    from edgefleet.deploy.fleet_evaluator import FleetEvaluator

    profile = "generic-linux-x86_64"
    device = f"test-eval-{uuid.uuid4().hex[:8]}"
    watcher = Watcher(broker_url, topics.state(device))
    agent = AgentProcess(broker_url, device, tmp_path / "data", signing_key[1], profile=profile).start()
    try:
        watcher.wait_for(lambda t, m: m.get("status") == "online", timeout=60)
        evaluator = FleetEvaluator(broker=BrokerURL.parse(broker_url), devices={profile: [device]}, runs=10, warmup=1, rounds=2)
        (result,) = compile_model(digits_mlp.onnx_path, [profile], calibration=digits_mlp.calibration_path,
                                  evaluation=digits_mlp.validation_path, out_dir=tmp_path / "out", key_path=signing_key[0],
                                  objective="latency", evaluator=evaluator)
    finally:
        watcher.close()
        agent.stop()
        clear_retained(broker_url, topics.state(device))
    rows = result.manifest.report["candidates"]
    measured = {r["scheme"]: r["measured_latency_ms"] for r in rows if r["measured_latency_ms"] is not None}
    assert evaluator.limit is not None and 1 <= len(measured) <= evaluator.limit and all(ms > 0 for ms in measured.values())
    rounds = result.manifest.report["measured_latency"]["by_scheme"]
    assert result.manifest.report["measured_latency"]["where"] == "on the fleet" and all(m["rounds"] == 2 for m in rounds.values())
    # The fastest median, or one within measurement noise of it that is smaller: on the noise-tolerant front.
    chosen = next(r for r in rows if r["chosen"])
    assert result.choice in measured and chosen["pareto"]
    assert "measured latency" in result.plan.reason and "on the fleet" in result.plan.reason


def test_a_microcontroller_short_of_flash_gets_lookup_table_weights_checked_in_tflm(digits_mlp, signing_key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import edgefleet.hardware_profiles

    nucleo = Path(edgefleet.hardware_profiles.__file__).parent / "nucleo-l4r5zi.yaml"
    small = tmp_path / "tiny-mcu.yaml"  # the plain int8 model (25 KiB) does not fit its flash
    small.write_text(nucleo.read_text().replace("name: nucleo-l4r5zi", "name: tiny-mcu").replace("  flash: 2 MiB", "  flash: 10 KiB"))
    with pytest.raises(NoCandidateFits) as info:
        compile_model(digits_mlp.onnx_path, [str(small)], out_dir=tmp_path / "out", key_path=signing_key[0],
                      data=digits_mlp.validation_path, budget=Budget(max_drop=0.02), objective="latency",
                      search=SearchOptions(time_budget_s=60))
    (plan,) = info.value.plans
    by_scheme = {v.candidate.scheme: v for v in plan.verdicts}
    lut, plain = by_scheme["cluster(clusters=16)+tflm-int8(lut=True)"], by_scheme["tflm-int8"]
    # Less flash for more RAM (weights are decoded into the arena) and more time (decoded every inference).
    assert lut.candidate.size_bytes < plain.candidate.size_bytes and lut.candidate.ram_bytes > plain.candidate.ram_bytes
    assert lut.estimate is not None and plain.estimate is not None and lut.estimate.latency_ms > plain.estimate.latency_ms
    assert any("outputs equal to the uncompressed model's in TFLM" in n for n in lut.candidate.notes)


def test_the_fleet_evaluator_enrols_the_devices_the_store_last_saw_online(tmp_path: Path) -> None:
    from edgefleet.agent.messages import DeviceState
    from edgefleet.agent.transport import BrokerURL
    from edgefleet.deploy.fleet_evaluator import FleetEvaluator
    from edgefleet.deploy.store import TelemetryStore

    with TelemetryStore(tmp_path / "fleet.db") as store:
        for device, status, profile in [("pi-a", "online", "raspberry-pi-4"), ("pi-b", "offline", "raspberry-pi-4"),
                                        ("pi-c", "online", "raspberry-pi-4"), ("phone", "online", "android-flagship")]:
            store.record_state(DeviceState(device_id=device, status=status, profile=profile))
        evaluator = FleetEvaluator.from_store(store, broker=BrokerURL.parse("mqtt://127.0.0.1:1883"))
    assert {p: sorted(d) for p, d in evaluator.devices.items()} == {"raspberry-pi-4": ["pi-a", "pi-c"],
                                                                    "android-flagship": ["phone"]}


def _fast_gpu_phone(tmp_path: Path) -> Path:
    """android-midrange with a GPU ten times faster and almost free to call: fp16 on it wins even for a tiny conv net."""
    import edgefleet.hardware_profiles

    src = (Path(edgefleet.hardware_profiles.__file__).parent / "android-midrange.yaml").read_text()
    fast = (src.replace("name: android-midrange", "name: fast-gpu-phone").replace("    peak_gops: 1000\n", "    peak_gops: 10000\n")
            .replace("    op_overhead_us: 10\n", "    op_overhead_us: 1\n").replace("    invoke_overhead_us: 1000\n", "    invoke_overhead_us: 10\n"))
    assert fast.count("10000") == 1 and "invoke_overhead_us: 10\n" in fast and "op_overhead_us: 1\n" in fast
    (tmp_path / "fast-gpu-phone.yaml").write_text(fast)
    return tmp_path / "fast-gpu-phone.yaml"


def test_structural_points_are_built_in_fp16_when_a_counted_gpu_makes_fp16_fastest(tmp_path: Path) -> None:
    """Pruned candidates must be tried in the format that is fastest on the device (here fp16 on the GPU),
    not only in the formats the CPU runs fast; the probe that prunes points before building estimates
    each in its own runtime, so it places fp16 on the GPU too."""
    from edgefleet.compiler import model_zoo, planner

    path = tmp_path / "resnet_block.onnx"
    path.write_bytes(model_zoo.resnet_block(0, size=16, width=8).SerializeToString())
    loaded = load_model(path)
    calib = dataclasses.replace(calibration.synthetic(loaded.inputs, count=32, seed=1), synthetic=False)
    held = calibration.synthetic(loaded.inputs, count=16, seed=2)
    data = PassData(evaluation=held, calibration=calib, reference=tuple(inference.run_model(loaded.model, list(held.feeds()))))
    phone = load_profile(_fast_gpu_phone(tmp_path))
    carried = frozenset({NumberFormat.FP32, NumberFormat.FP16, NumberFormat.INT8})
    # Random weights and inputs: the fidelity budget is off, so the choice is by estimated latency alone.
    budget = Budget(min_agreement=0.0, min_sqnr_db=-1e9)
    got = explore(loaded, data, {Runtime.LITERT: [(phone, carried)]},
                  options=SearchOptions(time_budget_s=600, grid_limit=10_000), budget=budget)
    measured = got.measured[Runtime.LITERT]
    assert "litert-fp16" in measured and "litert-int8-static" in measured
    assert {"channel-prune(ratio=0.25)+litert-fp16", "channel-prune(ratio=0.5)+litert-fp16"} <= set(measured), got.skipped
    plan = planner.plan([m.candidate for m in measured.values()], phone, budget=budget, runtime="litert", carried=carried,
                        objective="latency")
    chosen = next(v for v in plan.verdicts if v.candidate.scheme == plan.chosen.scheme) if plan.chosen else None
    assert chosen is not None and "+" in chosen.candidate.scheme and chosen.candidate.scheme.endswith("+litert-fp16")
    assert chosen.estimate is not None and "GPU" in chosen.estimate.unit


def test_the_digits_mlp_still_goes_to_int8_on_a_phone_cpu(pieces) -> None:  # type: ignore[no-untyped-def]
    """A 0.02 MMAC model takes less than one GPU call on the CPU: whatever the search builds, int8 on the CPU wins."""
    from edgefleet.compiler import planner

    loaded, data = pieces
    phone = load_profile("android-midrange")
    carried = frozenset({NumberFormat.FP32, NumberFormat.FP16, NumberFormat.INT8})
    got = explore(loaded, data, {Runtime.LITERT: [(phone, carried)]}, options=SearchOptions(time_budget_s=5), budget=Budget())
    measured = got.measured[Runtime.LITERT]
    plan = planner.plan([m.candidate for m in measured.values()], phone, runtime="litert", carried=carried, objective="latency")
    chosen = next(v for v in plan.verdicts if plan.chosen is not None and v.candidate.scheme == plan.chosen.scheme)
    assert chosen.candidate.number_format is NumberFormat.INT8 and chosen.estimate is not None and chosen.estimate.unit == "CPU"
