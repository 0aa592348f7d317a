"""The fleet as the compiler's evaluator: candidates benchmarked on enrolled devices of each profile.

Implements ``compiler.search.Evaluator`` for ``edgefleet compile --measure-on-fleet``. For a
profile, it picks a device of that profile (given, or online in the telemetry store), sends each
candidate package with ``benchmark.request_benchmark`` (the agent fetches, verifies, benchmarks
and removes it without touching what it serves), in ``rounds`` interleaved rounds so that load on
the device hits every candidate alike, and returns per candidate the median of the rounds' p50s
with its bootstrap 95% CI (``search.MeasuredLatency``); the compiler treats candidates within that
noise of the fastest as tied. A profile with no device, or a device that fails, leaves the cost
model's estimates in charge, and the log says why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgefleet.agent.transport import BrokerURL
from edgefleet.compiler.search import MeasuredLatency, measure_in_rounds
from edgefleet.deploy.benchmark import BenchmarkFailed, request_benchmark
from edgefleet.deploy.push import clear_package, describe_package
from edgefleet.deploy.store import TelemetryStore
from edgefleet.hardware_profiles.schema import HardwareProfile

log = logging.getLogger(__name__)


class FleetEvaluator:
    """Measures packages on one device per profile; ``devices`` maps a profile name to candidate device ids."""

    where = "on the fleet"
    limit: int | None = 3
    """Each candidate goes over MQTT to the device once per round: only the best few by estimate."""

    def __init__(self, *, broker: BrokerURL, devices: Mapping[str, Sequence[str]], runs: int = 50, warmup: int = 5,
                 rounds: int = 3, timeout: float = 300) -> None:
        if runs < 1 or rounds < 1:
            raise ValueError(f"runs and rounds must be at least 1, got {runs} and {rounds}")
        self.broker, self.devices, self.runs, self.warmup, self.timeout = broker, devices, runs, warmup, timeout
        self.rounds = rounds

    @classmethod
    def from_store(cls, store: TelemetryStore, *, broker: BrokerURL, runs: int = 50) -> FleetEvaluator:
        """Devices the store last saw online, by profile."""
        by_profile: dict[str, list[str]] = {}
        for d in store.devices():
            if d.status == "online":
                by_profile.setdefault(d.profile, []).append(d.device_id)
        return cls(broker=broker, devices=by_profile, runs=runs)

    def measure(self, profile: HardwareProfile, packages: Mapping[str, Path]) -> dict[str, MeasuredLatency]:
        devices = list(self.devices.get(profile.name, ()))
        if not devices:
            log.warning("no enrolled device of %s is online: its choice uses the cost model's estimates", profile.name)
            return {}
        device = devices[0]

        def once(scheme: str) -> float | None:
            package = packages[scheme]
            try:
                report = request_benchmark(package, broker=self.broker, device=device, runs=self.runs,
                                           warmup=self.warmup, timeout=self.timeout)
            except (BenchmarkFailed, TimeoutError) as exc:
                log.warning("%s on %s: not measured (%s)", scheme, device, exc)
                return None
            finally:
                # The package's chunks were published retained for the device to fetch; a candidate is not kept.
                clear_package(self.broker, describe_package(package)[1])
            return report.latency_ms.p50

        measured = measure_in_rounds(list(packages), self.rounds, once)
        for scheme, m in measured.items():
            log.info("%s on %s (%s): %s", scheme, device, profile.name, m.describe())
        return measured
