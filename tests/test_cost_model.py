"""The cost model is a pure function of a graph and a profile; the fleet's benchmarks correct it per profile."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import AgentProcess, Watcher, clear_retained
from onnx import numpy_helper, parser

from edgefleet.agent import topics
from edgefleet.agent.package import read_manifest
from edgefleet.agent.transport import BrokerURL
from edgefleet.compiler import cost_model
from edgefleet.compiler.compile import compile_model
from edgefleet.deploy.benchmark import request_benchmark
from edgefleet.deploy.cost_feedback import (
    Observation,
    correction_factors,
    corrections_from_store,
)
from edgefleet.deploy.push import clear_package, describe_package
from edgefleet.deploy.store import TelemetryStore
from edgefleet.hardware_profiles import load_profile
from edgefleet.hardware_profiles.schema import HardwareProfile, NumberFormat


def mlp(hidden: int = 32) -> onnx.ModelProto:
    """x[1,16] -> Gemm -> Relu -> Flatten -> Gemm -> [1,4], with random weights."""
    model = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,16] x) => (float[1,4] y) {
            h = Gemm(x, w1, b1)
            r = Relu(h)
            f = Flatten(r)
            y = Gemm(f, w2, b2)
        }""")
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (16, hidden)), ("b1", (hidden,)), ("w2", (hidden, 4)), ("b2", (4,))):
        model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    return model


def board(**changes: Any) -> HardwareProfile:
    fields: dict[str, Any] = {
        "name": "test-board", "display_name": "Test board", "kind": "sbc",
        "cpu": {"arch": "aarch64", "core": "Cortex-A53", "cores": 4, "clock_mhz": 1000},
        "memory": {"ram": "512 MiB", "storage": "8 GB", "bandwidth_gbps": 2},
        "runtimes": ["onnxruntime"], "formats": {"fp32": "supported", "int8": "fast", "fp16": "supported"},
        "throughput": {"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 0, "call_overhead_us": 0},
        "power": {"idle_w": 1, "active_w": 3},
        "sources": [{"title": "test", "url": "https://example.com/board"}],
    }
    fields.update(changes)
    return HardwareProfile.model_validate(fields)


def test_macs_weights_and_dispatches_are_counted_per_operator() -> None:
    g = cost_model.analyse(mlp(32))
    assert [o.op_type for o in g.ops] == ["Gemm", "Relu", "Flatten", "Gemm"]
    assert g.macs == 16 * 32 + 32 * 4
    gemm = g.ops[0]
    assert gemm.weight_elements == 16 * 32 + 32 and gemm.activation_elements == 16 + 32
    # Relu is fused into the Gemm before it and Flatten is free: two kernels run.
    assert g.dispatched == 2 and not g.ops[1].dispatch and not g.ops[2].dispatch


def test_compute_bound_latency_follows_throughput_and_int8_is_faster_where_it_is_fast() -> None:
    g = cost_model.analyse(mlp(2048))
    fp32 = cost_model.estimate(g, board(), NumberFormat.FP32)
    int8 = cost_model.estimate(g, board(), NumberFormat.INT8)
    assert fp32.latency_ms > int8.latency_ms
    # fp16 on a board that widens it to fp32 costs what fp32 costs.
    assert cost_model.estimate(g, board(), NumberFormat.FP16).latency_ms == pytest.approx(fp32.latency_ms)
    assert fp32.energy_mj == pytest.approx(fp32.latency_ms * 3)  # active_w = 3 W, ms x W = mJ


def test_memory_bound_weights_are_free_when_they_fit_in_cache() -> None:
    g = cost_model.analyse(mlp(2048))
    dram = cost_model.estimate(g, board(), NumberFormat.FP32)
    cached = cost_model.estimate(g, board(memory={"ram": "512 MiB", "storage": "8 GB", "bandwidth_gbps": 2, "cache": "4 MiB"}),
                                 NumberFormat.FP32)
    assert cached.bytes_moved < dram.bytes_moved and cached.latency_ms <= dram.latency_ms


def test_dynamic_quantization_costs_an_operator_per_layer_and_corrections_scale_linearly() -> None:
    g = cost_model.analyse(mlp(32))
    slow = board(throughput={"fp32_gflops": 5, "int8_gops": 10, "op_overhead_us": 10, "call_overhead_us": 5})
    static = cost_model.estimate(g, slow, NumberFormat.INT8)
    dynamic = cost_model.estimate(g, slow, NumberFormat.INT8, runtime_quantization=True)
    assert dynamic.overhead_ms == pytest.approx(static.overhead_ms + 2 * 0.010)
    assert cost_model.estimate(g, slow, NumberFormat.INT8, correction=2.0).latency_ms == pytest.approx(2 * static.latency_ms)


def test_default_overheads_come_from_the_clock_and_a_microcontroller_dispatches_cheaply() -> None:
    g = cost_model.analyse(mlp(32))
    mcu = load_profile("nucleo-l4r5zi")
    e = cost_model.estimate(g, mcu, NumberFormat.INT8)
    assert e.overhead_ms == pytest.approx((2000 + 2 * 300) / 120 / 1000)
    assert e.compute_ms > 0


def test_corrections_are_the_median_ratio_per_profile() -> None:
    obs = [Observation("pi", "a", 3.0, 1.0), Observation("pi", "b", 2.0, 1.0), Observation("pi", "a", 100.0, 1.0),
           Observation("phone", "c", 0.5, 1.0)]
    got = correction_factors(obs)
    assert got["pi"].factor == 3.0 and got["pi"].reports == 3 and got["pi"].packages == 2
    assert got["phone"].factor == 0.5
    assert correction_factors(obs, min_reports=2).keys() == {"pi"}


def test_a_fleet_benchmark_corrects_the_next_compile(digits_mlp, signing_key, broker_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real agent benchmarks a compiled package, the report goes into a real store, the next compile uses it."""
    profile = "generic-linux-x86_64"
    out = tmp_path / "packages"
    (first,) = compile_model(digits_mlp.onnx_path, [profile], calibration=digits_mlp.calibration_path,
                             out_dir=out, key_path=signing_key[0], name="digits", objective="latency")
    estimate = first.manifest.report["cost_estimate"]
    assert estimate["correction"] == 1.0 and estimate["latency_ms"] > 0
    device = f"test-cost-{uuid.uuid4().hex[:8]}"
    watcher = Watcher(broker_url, topics.state(device))
    agent = AgentProcess(broker_url, device, tmp_path / "data", signing_key[1], profile=profile).start()
    url = BrokerURL.parse(broker_url)
    try:
        # Benchmark requests are not retained: ask once the agent is listening.
        watcher.wait_for(lambda t, m: m.get("status") == "online", timeout=60)
        report = request_benchmark(first.package_path, broker=url, device=device, runs=20, warmup=2, timeout=120)
    finally:
        watcher.close()
        agent.stop()
        clear_package(url, describe_package(first.package_path)[1])
        clear_retained(broker_url, topics.state(device))
    with TelemetryStore(tmp_path / "fleet.db") as store:
        store.record_benchmark(report)
        found = corrections_from_store(store, package_dirs=[out])
    factor = found[profile].factor
    assert found[profile].reports == 1
    assert factor == pytest.approx(report.latency_ms.p50 / estimate["latency_ms"])

    (second,) = compile_model(digits_mlp.onnx_path, [profile], calibration=digits_mlp.calibration_path,
                              out_dir=tmp_path / "again", key_path=signing_key[0], name="digits", objective="latency",
                              corrections={profile: factor})
    corrected = read_manifest(second.package_path).report["cost_estimate"]
    assert corrected["correction"] == factor
    assert corrected["latency_ms"] == pytest.approx(report.latency_ms.p50, rel=1e-3)  # the manifest rounds estimates


def test_simulated_reports_do_not_correct_a_real_device_profile(tmp_path: Path) -> None:
    from edgefleet.deploy.cost_feedback import observations
    from edgefleet.deploy.store import BenchmarkRow

    def row(profile: str, simulated: bool) -> BenchmarkRow:
        return BenchmarkRow(device_id="d", profile=profile, simulated=simulated, package_id="p", model_name="m",
                            model_version="1", runtime="onnxruntime", runtime_version="1", mean_ms=2, p50_ms=2, p90_ms=2,
                            p99_ms=2, throughput_ips=500, peak_rss_mb=1, power_w=1, power_source="model", energy_mj=1,
                            ts=0, report_json="{}")

    def host(name: str) -> bool:
        return name == "generic-linux-x86_64"

    got = observations([row("raspberry-pi-4", True), row("generic-linux-x86_64", True), row("raspberry-pi-4", False)],
                       {"p": 1.0}, trust_simulated=host)
    assert [(o.profile, o.measured_ms) for o in got] == [("generic-linux-x86_64", 2), ("raspberry-pi-4", 2)]
