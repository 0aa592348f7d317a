"""/metrics: the fleet in the Prometheus text format, parsed back with prometheus_client's own parser."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.deploy.dashboard.app import create_app
from edgefleet.deploy.dashboard.sample import benchmark, device_state, fill_sample_fleet
from edgefleet.deploy.metrics import render_metrics
from edgefleet.deploy.store import TelemetryStore

with warnings.catch_warnings():  # Starlette 1.x asks for `httpx2`, which is not released; httpx works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

NOW = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TelemetryStore]:
    with TelemetryStore(tmp_path / "fleet.db") as s:
        yield s


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert all(f.type == "gauge" for f in families.values())
    return {name: [(s.labels, s.value) for s in f.samples] for name, f in families.items()}


def _one(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    found = [v for lab, v in samples if all(lab.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, samples)
    return found[0]


def test_metrics_parse_and_carry_per_device_figures_in_base_units(store: TelemetryStore) -> None:
    store.record_state(device_state("pi-a", "raspberry-pi-4", package_id="kws@2:raspberry-pi-4", ts=NOW - 5))
    store.record_state(device_state("pi-b", "raspberry-pi-4", status="offline", ts=NOW - 500))
    store.record_benchmark(benchmark("pi-a", "raspberry-pi-4", "kws@1:raspberry-pi-4", p50=20.0, watts=4.0,
                                     ts=NOW - 60))
    store.record_benchmark(benchmark("pi-a", "raspberry-pi-4", "kws@2:raspberry-pi-4", p50=10.0, watts=5.0,
                                     ts=NOW - 120, temperature=55.0))
    m = _samples(render_metrics(store).decode())

    assert _one(m["edgefleet_device_online"], device="pi-a") == 1.0
    assert _one(m["edgefleet_device_online"], device="pi-b") == 0.0
    assert _one(m["edgefleet_device_last_seen_timestamp_seconds"], device="pi-a") == NOW - 5
    # The installed package's benchmark, although v1's is newer.
    lat = m["edgefleet_benchmark_latency_seconds"]
    assert _one(lat, device="pi-a", quantile="0.5", package="kws@2:raspberry-pi-4") == pytest.approx(0.010)
    assert _one(lat, device="pi-a", quantile="0.9") == pytest.approx(0.012)
    assert _one(lat, device="pi-a", quantile="0.99") == pytest.approx(0.015)
    assert _one(m["edgefleet_benchmark_throughput_inferences_per_second"], device="pi-a") == pytest.approx(1000 / 10.5)
    assert _one(m["edgefleet_benchmark_power_watts"], device="pi-a", source="hwmon:ina219") == 5.0
    assert _one(m["edgefleet_benchmark_energy_per_inference_joules"], device="pi-a") == pytest.approx(5.0 * 10.5 / 1000)
    assert _one(m["edgefleet_benchmark_temperature_celsius"], device="pi-a") == 55.0
    assert _one(m["edgefleet_benchmark_timestamp_seconds"], device="pi-a") == NOW - 120
    assert not [s for s in lat if s[0]["device"] == "pi-b"]  # never benchmarked: no figures, not zeros
    assert _one(m["edgefleet_devices"], profile="raspberry-pi-4", status="online") == 1
    assert _one(m["edgefleet_devices"], profile="raspberry-pi-4", status="offline") == 1


def test_rollout_states_and_phases(store: TelemetryStore) -> None:
    fill_sample_fleet(store, now=NOW)
    m = _samples(render_metrics(store).decode())
    status = m["edgefleet_rollout_status"]
    assert _one(status, rollout="demo-v2", status="running") == 1.0
    assert {s[0]["status"] for s in status if s[1] == 0.0} == {"paused", "rolling_back", "completed", "aborted"}
    assert _one(m["edgefleet_rollout_devices"], rollout="demo-v2", phase="done") == 3
    assert _one(m["edgefleet_rollout_devices"], rollout="demo-v2", phase="deploying") == 1
    assert _one(m["edgefleet_devices"], profile="raspberry-pi-zero-2-w", status="offline") == 1


def test_the_endpoint_serves_the_text_format_and_escapes_labels(store: TelemetryStore) -> None:
    store.record_state(device_state("pi-a", "raspberry-pi-4", ts=NOW).model_copy(update={"agent_version": 'a"b\\c'}))
    response = TestClient(create_app(store)).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    info = _samples(response.text)["edgefleet_device_info"]
    assert info == [({"device": "pi-a", "profile": "raspberry-pi-4", "simulated": "false", "package": "",
                      "agent_version": 'a"b\\c'}, 1.0)]


def test_an_empty_store_still_parses(store: TelemetryStore) -> None:
    samples = _samples(render_metrics(store).decode())
    assert "edgefleet_device_online" in samples and "edgefleet_rollout_status" in samples
    assert all(v == [] for v in samples.values())
