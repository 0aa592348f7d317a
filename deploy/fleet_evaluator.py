"""The fleet as the compiler's evaluator: candidates benchmarked on enrolled devices of each profile.

Implements ``compiler.search.Evaluator`` for ``edgefleet compile --measure-on-fleet``. For a
profile, it picks a device of that profile (given, or online in the telemetry store), sends each
candidate package with ``benchmark.request_benchmark`` (the agent fetches, verifies, benchmarks
and removes it without touching what it serves) and returns the median latency (p50) per
candidate. A profile with no device, or a device that fails, leaves the cost model's estimates in
charge, and the log says why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.benchmark import BenchmarkFailed, request_benchmark
from edgefleet.deploy.push import clear_package, describe_package
from edgefleet.deploy.store import TelemetryStore
from edgefleet.hardware_profiles.schema import HardwareProfile

log = logging.getLogger(__name__)


class FleetEvaluator:
    """Measures packages on one device per profile; ``devices`` maps a profile name to candidate device ids."""

    def __init__(self, *, broker: BrokerURL, devices: Mapping[str, Sequence[str]], runs: int = 50, warmup: int = 5,
                 timeout: float = 300) -> None:
        if runs < 1:
            raise ValueError(f"runs must be at least 1, got {runs}")
        self.broker, self.devices, self.runs, self.warmup, self.timeout = broker, devices, runs, warmup, timeout

    @classmethod
    def from_store(cls, store: TelemetryStore, *, broker: BrokerURL, runs: int = 50) -> FleetEvaluator:
        """Devices the store last saw online, by profile."""
        by_profile: dict[str, list[str]] = {}
        for d in store.devices():
            if d.status == "online":
                by_profile.setdefault(d.profile, []).append(d.device_id)
        return cls(broker=broker, devices=by_profile, runs=runs)

    def measure(self, profile: HardwareProfile, packages: Mapping[str, Path]) -> dict[str, float]:
        devices = list(self.devices.get(profile.name, ()))
        if not devices:
            log.warning("no enrolled device of %s is online: its choice uses the cost model's estimates", profile.name)
            return {}
        device = devices[0]
        measured: dict[str, float] = {}
        for scheme, package in packages.items():
            try:
                report = request_benchmark(package, broker=self.broker, device=device, runs=self.runs, warmup=self.warmup,
                                           timeout=self.timeout)
            except (BenchmarkFailed, TimeoutError) as exc:
                log.warning("%s on %s: not measured (%s)", scheme, device, exc)
                continue
            finally:
                # The package's chunks were published retained for the device to fetch; a candidate is not kept.
                clear_package(self.broker, describe_package(package)[1])
            measured[scheme] = report.latency_ms.p50
            log.info("%s on %s (%s): p50 %.3f ms", scheme, device, profile.name, report.latency_ms.p50)
        return measured
