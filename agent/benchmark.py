"""Measure an installed model: warm-up, timed runs, latency percentiles, memory, CPU, power.

Timing uses ``perf_counter_ns`` around each ``run`` call and nothing else inside the loop, so the
figure is the runtime's latency plus one Python call. Peak RSS is the process's high-water mark
(``ru_maxrss``), which includes the runtime and the loaded model.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import numpy as np
import psutil

from edgefleet.agent.errors import BenchmarkError
from edgefleet.agent.messages import LatencyStats, PowerReading
from edgefleet.agent.power import PowerSource
from edgefleet.agent.runtimes import LoadedModel


@dataclass(frozen=True, slots=True)
class BenchmarkSettings:
    warmup: int = 10
    runs: int = 200
    max_seconds: float = 10.0  # stop early on slow models, after at least `min_runs`
    min_runs: int = 10
    threads: int = 0

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.runs < 1 or self.min_runs < 1 or self.max_seconds <= 0:
            raise ValueError(f"invalid benchmark settings: {self}")


@dataclass(frozen=True, slots=True)
class Measurement:
    first_inference_ms: float
    runs: int
    latency: LatencyStats
    throughput_ips: float
    peak_rss_mb: float
    cpu_percent: float
    power: PowerReading
    energy_mj: float


def measure(
    model: LoadedModel, feeds: dict[str, np.ndarray], settings: BenchmarkSettings, power: PowerSource, cores: int
) -> Measurement:
    """Benchmark ``model`` on ``feeds``; ``cores`` is the device's core count, for the power model."""
    try:
        t0 = time.perf_counter_ns()
        model.run(feeds)
        first_ms = (time.perf_counter_ns() - t0) / 1e6
        for _ in range(settings.warmup):
            model.run(feeds)
        proc = psutil.Process()
        cpu0 = proc.cpu_times()
        wall0 = time.perf_counter()
        deadline = wall0 + settings.max_seconds
        samples: list[int] = []
        while len(samples) < settings.runs:
            t = time.perf_counter_ns()
            model.run(feeds)
            samples.append(time.perf_counter_ns() - t)
            if len(samples) >= settings.min_runs and time.perf_counter() > deadline:
                break
        wall = time.perf_counter() - wall0
        cpu1 = proc.cpu_times()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise BenchmarkError(f"inference failed during the benchmark: {exc}") from None

    ms = np.array(samples, dtype=np.float64) / 1e6
    cpu_percent = 100.0 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall
    utilisation = min(cpu_percent / 100.0 / max(cores, 1), 1.0)
    watts = power.read_w(utilisation)
    idle = power.read_w(0.0) if power.name == "estimate" else None
    mean_s = float(ms.mean()) / 1e3
    return Measurement(
        first_inference_ms=first_ms,
        runs=len(samples),
        latency=LatencyStats(
            mean=float(ms.mean()),
            std=float(ms.std()),
            min=float(ms.min()),
            p50=float(np.percentile(ms, 50)),
            p90=float(np.percentile(ms, 90)),
            p99=float(np.percentile(ms, 99)),
            max=float(ms.max()),
        ),
        throughput_ips=len(samples) / wall,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        cpu_percent=cpu_percent,
        power=PowerReading(watts=watts, idle_watts=idle, source=power.name),
        energy_mj=watts * mean_s * 1e3,
    )
