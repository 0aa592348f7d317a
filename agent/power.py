"""Board power: from a sensor when the device has one, otherwise the profile's estimate.

Every reading names its source, so a figure from a real INA219 is never confused with a number
a power model made up. A simulated device always uses the estimate: the host's sensors say
nothing about the board it pretends to be.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgefleet.hardware_profiles import HardwareProfile

log = logging.getLogger(__name__)

ESTIMATE = "estimate"


class PowerSource(Protocol):
    name: str

    def read_w(self, cpu_utilisation: float) -> float:
        """Board power in watts now; ``cpu_utilisation`` (0..1 of all cores) drives estimates."""
        ...


@dataclass(frozen=True, slots=True)
class ProfileEstimate:
    """The profile's linear power model: idle watts plus a share of (active - idle) by CPU load."""

    profile: HardwareProfile
    name: str = ESTIMATE

    def read_w(self, cpu_utilisation: float) -> float:
        return self.profile.power.estimate_w(cpu_utilisation)


@dataclass(frozen=True, slots=True)
class HwmonPower:
    """A hwmon power channel (INA219/INA226/INA3221 drivers expose ``power1_input`` in microwatts)."""

    path: Path
    name: str

    def read_w(self, cpu_utilisation: float) -> float:
        return int(self.path.read_text().strip()) / 1e6


def find_power_source(profile: HardwareProfile, *, sysfs: Path = Path("/sys"), simulated: bool = False) -> PowerSource:
    """The best power source on this device."""
    if not simulated:
        for hwmon in sorted((sysfs / "class" / "hwmon").glob("hwmon*")):
            sensor = hwmon / "power1_input"
            try:
                chip = (hwmon / "name").read_text().strip()
                int(sensor.read_text().strip())
            except (OSError, ValueError):
                continue
            log.info("power from hwmon sensor %s (%s)", chip, hwmon)
            return HwmonPower(path=sensor, name=f"hwmon:{chip}")
    return ProfileEstimate(profile)
