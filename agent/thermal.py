"""Temperature, throttling and CPU governor: what explains a slow or noisy benchmark.

    temperature_c(sysfs)       the hottest ``class/thermal/thermal_zone*/temp`` in degrees C, or None
    throttled_flags(vcgencmd)  Raspberry Pi firmware throttling flags from ``vcgencmd get_throttled``,
                               or None where there is no vcgencmd
    governor(sysfs)            cpu0's cpufreq scaling governor ("ondemand", "performance", ...), or None

Each returns None when the device does not expose the figure, rather than raising: a missing
sensor is normal, and a benchmark must not fail for want of a thermometer.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from edgefleet.agent.power import run_vcgencmd

log = logging.getLogger(__name__)

# Bits of `vcgencmd get_throttled` (Raspberry Pi firmware documentation), low bits "now", high "since boot".
THROTTLE_BITS = {
    0: "under-voltage",
    1: "frequency-capped",
    2: "throttled",
    3: "soft-temperature-limit",
    16: "under-voltage-occurred",
    17: "frequency-capped-occurred",
    18: "throttled-occurred",
    19: "soft-temperature-limit-occurred",
}


def temperature_c(sysfs: Path = Path("/sys")) -> float | None:
    """The hottest thermal zone, in degrees Celsius; None when no zone can be read."""
    temps = []
    for zone in sorted((sysfs / "class" / "thermal").glob("thermal_zone*")):
        try:
            temps.append(int((zone / "temp").read_text().strip()) / 1000.0)  # millidegrees
        except (OSError, ValueError):
            continue  # some zones (e.g. a sleeping wifi chip) refuse to be read
    return max(temps) if temps else None


def parse_throttled(output: str) -> list[str]:
    """Flag names set in ``throttled=0x50005``; an empty list when nothing is throttled."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", output)
    if m is None:
        raise ValueError(f"unexpected get_throttled output: {output.strip()[:100]!r}")
    value = int(m.group(1), 0)
    return [name for bit, name in THROTTLE_BITS.items() if value & (1 << bit)]


def throttled_flags(vcgencmd: str = "vcgencmd") -> list[str] | None:
    try:
        return parse_throttled(run_vcgencmd(vcgencmd, "get_throttled"))
    except (OSError, ValueError) as exc:
        log.debug("no throttling flags: %s", exc)
        return None


def governor(sysfs: Path = Path("/sys")) -> str | None:
    try:
        return (sysfs / "devices" / "system" / "cpu" / "cpu0" / "cpufreq" / "scaling_governor").read_text().strip()
    except OSError:
        return None
