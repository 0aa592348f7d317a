"""Periodic device health: CPU, memory, temperature, disk, uptime, model and counters, as a ``SystemSample``.

The agent publishes one every ``system_interval`` seconds from its main loop (so a long deployment
delays, rather than races, the next sample). A simulated device reports no temperature: the
host's says nothing about the board it pretends to be.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from edgefleet.agent import thermal
from edgefleet.agent.messages import SystemSample


@dataclass
class Counters:
    """What the agent has done since it started."""

    inferences: int = 0
    benchmarks: int = 0
    deployments_done: int = 0
    deployments_failed: int = 0


class SystemMonitor:
    def __init__(self, *, device_id: str, profile: str, simulated: bool, data_dir: Path,
                 sysfs: Path = Path("/sys")) -> None:
        self.device_id = device_id
        self.profile = profile
        self.simulated = simulated
        self.data_dir = Path(data_dir)
        self.sysfs = Path(sysfs)
        self.started = time.monotonic()
        psutil.cpu_percent(interval=None)  # the first call only primes the counter

    def sample(self, counters: Counters, *, package_id: str | None = None, version: str | None = None) -> SystemSample:
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(str(self.data_dir))
        try:
            load_1m: float | None = os.getloadavg()[0]
        except OSError:
            load_1m = None
        return SystemSample(
            device_id=self.device_id, profile=self.profile, simulated=self.simulated,
            cpu_percent=psutil.cpu_percent(interval=None), load_1m=load_1m,
            memory_used_mb=(memory.total - memory.available) / 2**20, memory_total_mb=memory.total / 2**20,
            temperature_c=None if self.simulated else thermal.temperature_c(self.sysfs),
            disk_free_mb=disk.free / 2**20, disk_used_percent=disk.percent,
            uptime_s=time.time() - psutil.boot_time(), agent_uptime_s=time.monotonic() - self.started,
            model_package_id=package_id, model_version=version,
            inferences=counters.inferences, benchmarks=counters.benchmarks,
            deployments_done=counters.deployments_done, deployments_failed=counters.deployments_failed,
        )
