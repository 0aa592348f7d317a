"""The fleet in the Prometheus text format, read from the telemetry store at scrape time.

``render_metrics(store)`` returns the body of ``/metrics``. It uses ``prometheus_client``'s
custom-collector API: each scrape builds fresh gauge families from the store (no process-global
registry, no counters kept in memory), and the library writes the exposition format, escaping
label values, so we do not maintain a serializer. Units follow Prometheus conventions: seconds,
watts, joules.

Per device (labels ``device``, ``profile``, ``simulated``)::

    edgefleet_device_online                         1 online, 0 offline
    edgefleet_device_last_seen_timestamp_seconds    the newest state's time
    edgefleet_device_info                           1, with package and agent_version labels

Per device, from the newest benchmark of the package it runs (else its newest benchmark)::

    edgefleet_benchmark_latency_seconds{quantile="0.5|0.9|0.99"}
    edgefleet_benchmark_throughput_inferences_per_second
    edgefleet_benchmark_power_watts
    edgefleet_benchmark_energy_per_inference_joules
    edgefleet_benchmark_temperature_celsius        only when the device reported one
    edgefleet_benchmark_timestamp_seconds

Fleet and rollouts::

    edgefleet_devices{profile, status}              how many devices
    edgefleet_rollout_status{rollout, status}       1 for the rollout's status, 0 for the others
    edgefleet_rollout_devices{rollout, phase}       how many of its devices are in each phase
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgefleet.deploy.dashboard.views import current_benchmarks
from edgefleet.deploy.rollout import RolloutStatus
from edgefleet.deploy.store import TelemetryStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DEVICE_LABELS = ["device", "profile", "simulated"]


class FleetCollector(Collector):
    """A ``prometheus_client`` collector that reads ``store`` on every scrape."""

    def __init__(self, store: TelemetryStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        devices = self.store.devices()
        current = current_benchmarks(devices, self.store.latest_benchmarks())

        online = GaugeMetricFamily("edgefleet_device_online", "1 if the device is online, 0 if offline.",
                                   labels=_DEVICE_LABELS)
        seen = GaugeMetricFamily("edgefleet_device_last_seen_timestamp_seconds",
                                 "Unix time of the device's newest state message.", labels=_DEVICE_LABELS)
        info = GaugeMetricFamily("edgefleet_device_info", "Always 1; labels say what the device runs.",
                                 labels=[*_DEVICE_LABELS, "package", "agent_version"])
        latency = GaugeMetricFamily("edgefleet_benchmark_latency_seconds",
                                    "Per-inference latency quantiles of the device's current benchmark.",
                                    labels=[*_DEVICE_LABELS, "package", "quantile"])
        throughput = GaugeMetricFamily("edgefleet_benchmark_throughput_inferences_per_second",
                                       "Sequential inferences per second.", labels=[*_DEVICE_LABELS, "package"])
        power = GaugeMetricFamily("edgefleet_benchmark_power_watts", "Average board power during the benchmark.",
                                  labels=[*_DEVICE_LABELS, "package", "source"])
        energy = GaugeMetricFamily("edgefleet_benchmark_energy_per_inference_joules",
                                   "Energy per inference: power times mean latency.", labels=[*_DEVICE_LABELS, "package"])
        temperature = GaugeMetricFamily("edgefleet_benchmark_temperature_celsius",
                                        "Hottest thermal zone after the timed runs.", labels=[*_DEVICE_LABELS, "package"])
        bench_ts = GaugeMetricFamily("edgefleet_benchmark_timestamp_seconds", "Unix time of the benchmark.",
                                     labels=[*_DEVICE_LABELS, "package"])
        for d in devices:
            labels = [d.device_id, d.profile, str(d.simulated).lower()]
            online.add_metric(labels, 1.0 if d.status == "online" else 0.0)
            seen.add_metric(labels, d.last_seen)
            info.add_metric([*labels, d.package_id or "", d.agent_version], 1.0)
            b = current.get(d.device_id)
            if b is None:
                continue
            with_package = [*labels, b.package_id]
            for quantile, ms in (("0.5", b.p50_ms), ("0.9", b.p90_ms), ("0.99", b.p99_ms)):
                latency.add_metric([*with_package, quantile], ms / 1000)
            throughput.add_metric(with_package, b.throughput_ips)
            power.add_metric([*with_package, b.power_source], b.power_w)
            energy.add_metric(with_package, b.energy_mj / 1000)
            bench_ts.add_metric(with_package, b.ts)
            celsius = json.loads(b.report_json).get("temperature_after_c")
            if celsius is not None:
                temperature.add_metric(with_package, float(celsius))
        yield from (online, seen, info, latency, throughput, power, energy, temperature, bench_ts)

        counts = GaugeMetricFamily("edgefleet_devices", "Devices known to the fleet, by profile and status.",
                                   labels=["profile", "status"])
        for (profile, status), n in sorted(Counter((d.profile, d.status) for d in devices).items()):
            counts.add_metric([profile, status], n)
        yield counts

        status = GaugeMetricFamily("edgefleet_rollout_status", "1 for the rollout's current status, 0 for the others.",
                                   labels=["rollout", "status"])
        phases = GaugeMetricFamily("edgefleet_rollout_devices", "Devices of a rollout in each phase.",
                                   labels=["rollout", "phase"])
        for head in self.store.rollouts():
            for s in RolloutStatus:
                status.add_metric([head.rollout_id, s.value], 1.0 if head.status == s.value else 0.0)
            found = self.store.rollout(head.rollout_id)
            if found is not None:
                for phase, n in sorted(Counter(d.phase for d in found[2]).items()):
                    phases.add_metric([head.rollout_id, phase], n)
        yield status
        yield phases


def render_metrics(store: TelemetryStore) -> bytes:
    """The whole exposition, as ``/metrics`` serves it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store))
    return generate_latest(registry)
