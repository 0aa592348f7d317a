"""Measure an installed model: warm-up, timed runs, latency percentiles, memory, CPU, power.

Timing uses ``perf_counter_ns`` around each ``run`` call and nothing else inside the loop, so the
figure is the runtime's latency plus one Python call. Peak RSS is the process's high-water mark
(``ru_maxrss``), which includes the runtime and the loaded model.

Power is measured around the timed loop (``PowerSource.start``/``stop``). When the source is a
sensor, the device is first left idle for ``idle_seconds`` to measure its baseline, so that the
report carries both the total energy per inference and the energy above idle. If the sensor fails
during the run, the figure comes from ``fallback`` (the profile's estimate) and says so.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from edgefleet.agent import thermal
from edgefleet.agent.errors import BenchmarkError
from edgefleet.agent.messages import LatencyStats, PowerReading
from edgefleet.agent.power import PowerSource
from edgefleet.agent.runtimes import LoadedModel

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BenchmarkSettings:
    warmup: int = 10
    runs: int = 200
    max_seconds: float = 10.0  # stop early on slow models, after at least `min_runs`
    min_runs: int = 10
    threads: int = 0
    idle_seconds: float = 2.0  # idle baseline before the run, when power comes from a sensor

    def __post_init__(self) -> None:
        if (self.warmup < 0 or self.runs < 1 or self.min_runs < 1 or self.max_seconds <= 0
                or self.idle_seconds < 0):
            raise ValueError(f"invalid benchmark settings: {self}")


@dataclass(frozen=True, slots=True)
class DeviceProbe:
    """Where the thermal figures come from: the sysfs root and the vcgencmd command."""

    sysfs: Path = Path("/sys")
    vcgencmd: str = "vcgencmd"

    def temperature_c(self) -> float | None:
        return thermal.temperature_c(self.sysfs)

    def throttled(self) -> list[str] | None:
        return thermal.throttled_flags(self.vcgencmd)

    def governor(self) -> str | None:
        return thermal.governor(self.sysfs)


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
    energy_above_idle_mj: float | None = None
    temperature_before_c: float | None = None
    temperature_after_c: float | None = None
    throttled: list[str] | None = None
    governor: str | None = None


def idle_baseline(power: PowerSource, seconds: float, logger: logging.Logger = log) -> float | None:
    """Average watts while this process sleeps for ``seconds``; the estimate's idle figure for a model."""
    if not power.measured:
        return power.read_w(0.0)
    if seconds <= 0:
        return None
    try:
        power.start()
        time.sleep(seconds)
        return power.stop(0.0)
    except (OSError, ValueError) as exc:
        logger.warning("no idle baseline from %s: %s", power.name, exc)
        return None


def measure(
    model: LoadedModel, feeds: dict[str, np.ndarray], settings: BenchmarkSettings, power: PowerSource, cores: int,
    *, fallback: PowerSource | None = None, probe: DeviceProbe | None = None, logger: logging.Logger = log,
) -> Measurement:
    """Benchmark ``model`` on ``feeds``; ``cores`` is the device's core count, for the power model.

    ``fallback`` gives the power figure if ``power`` fails during the run; ``probe`` reads
    temperatures, throttling and governor (None on a simulated device: the host's say nothing).
    """
    idle = idle_baseline(power, settings.idle_seconds, logger)
    governor = probe.governor() if probe else None
    temp_before = probe.temperature_c() if probe else None
    power_ok = False
    try:
        t0 = time.perf_counter_ns()
        model.run(feeds)
        first_ms = (time.perf_counter_ns() - t0) / 1e6
        for _ in range(settings.warmup):
            model.run(feeds)
        proc = psutil.Process()
        power_ok = _start(power, logger)
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
        if power_ok:
            _stop(power, 0.0, logger)  # end the sampling thread
        raise BenchmarkError(f"inference failed during the benchmark: {exc}") from None

    # numpy is imported here, not at the top: it costs ~15 MB of RSS, which an idle agent
    # (no model loaded yet) should not pay; by now the runtime has imported it anyway.
    import numpy as np

    ms = np.array(samples, dtype=np.float64) / 1e6
    cpu_percent = 100.0 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall
    utilisation = min(cpu_percent / 100.0 / max(cores, 1), 1.0)
    source = power
    watts = _stop(power, utilisation, logger) if power_ok else None
    if watts is None:
        if fallback is None:
            raise BenchmarkError(f"power source {power.name} could not be read and there is no fallback")
        source, watts, idle = fallback, fallback.stop(utilisation), idle_baseline(fallback, 0.0)
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
        power=PowerReading(watts=watts, idle_watts=idle, source=source.name,
                           seconds=wall if source.measured else None),
        energy_mj=watts * mean_s * 1e3,
        energy_above_idle_mj=max(watts - idle, 0.0) * mean_s * 1e3 if idle is not None else None,
        temperature_before_c=temp_before,
        temperature_after_c=probe.temperature_c() if probe else None,
        throttled=probe.throttled() if probe else None,
        governor=governor,
    )


def _start(power: PowerSource, logger: logging.Logger) -> bool:
    try:
        power.start()
        return True
    except (OSError, ValueError) as exc:
        logger.warning("power source %s failed at the start of the run: %s", power.name, exc)
        return False


def _stop(power: PowerSource, utilisation: float, logger: logging.Logger) -> float | None:
    try:
        return power.stop(utilisation)
    except (OSError, ValueError) as exc:
        logger.warning("power source %s failed during the run: %s", power.name, exc)
        return None
