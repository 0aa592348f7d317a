"""Which hardware profile this device is, when ``--profile`` is not given.

Evidence is tried in order, and the first that names a known board wins:

    1. ``{proc}/device-tree/model``    "Raspberry Pi 4 Model B Rev 1.4"  (Linux on ARM boards)
    2. ``{proc}/cpuinfo`` ``Model``    the same string, printed by Raspberry Pi kernels
    3. ``{proc}/cpuinfo`` ``Revision`` a Raspberry Pi new-style revision code (board type bits 4-11)
    4. the CPU architecture             x86_64 -> generic-linux-x86_64

``detect_profile`` returns the profile name and the evidence, so the agent can log what it chose
and why; it raises ``ConfigError`` when nothing matches, telling the user to pass ``--profile``.
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.errors import ConfigError

# Model string prefix -> profile. Boards with the same SoC and clocks share a profile.
_MODELS = (
    ("Raspberry Pi 5", "raspberry-pi-5"),
    ("Raspberry Pi 500", "raspberry-pi-5"),
    ("Raspberry Pi Compute Module 5", "raspberry-pi-5"),
    ("Raspberry Pi 4", "raspberry-pi-4"),
    ("Raspberry Pi 400", "raspberry-pi-4"),
    ("Raspberry Pi Compute Module 4", "raspberry-pi-4"),
    ("Raspberry Pi Zero 2", "raspberry-pi-zero-2-w"),
)
# Raspberry Pi revision code board types (https://www.raspberrypi.com/documentation/computers/raspberry-pi.html).
_REVISION_TYPES = {0x11: "raspberry-pi-4", 0x13: "raspberry-pi-4", 0x14: "raspberry-pi-4",
                   0x12: "raspberry-pi-zero-2-w", 0x17: "raspberry-pi-5", 0x18: "raspberry-pi-5"}
_MACHINES = {"x86_64": "generic-linux-x86_64", "amd64": "generic-linux-x86_64"}


@dataclass(frozen=True, slots=True)
class Detection:
    profile: str
    evidence: str  # what was read, e.g. "/proc/device-tree/model: 'Raspberry Pi 5 Model B Rev 1.0'"


def profile_for_model(model: str) -> str | None:
    """The profile of a board model string, or None for a board without a bundled profile."""
    model = model.strip().strip("\x00").strip()
    # Longest prefix first, so "Raspberry Pi 400" is not read as "Raspberry Pi 4".
    for prefix, profile in sorted(_MODELS, key=lambda m: -len(m[0])):
        if model.startswith(prefix) and not model[len(prefix):len(prefix) + 1].isdigit():
            return profile
    return None


def detect_profile(*, proc: Path = Path("/proc"), machine: str | None = None) -> Detection:
    """Detect this device's profile from ``proc`` (a setting, so tests can point at a fake tree)."""
    seen: list[str] = []
    dt_model = proc / "device-tree" / "model"
    try:
        model = dt_model.read_bytes().decode(errors="replace").strip("\x00").strip()
    except OSError:
        model = ""
    if model:
        seen.append(f"{dt_model}: {model!r}")
        if profile := profile_for_model(model):
            return Detection(profile, seen[-1])

    cpuinfo = proc / "cpuinfo"
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    if m := re.search(r"^Model\s*:\s*(.+)$", text, re.MULTILINE):
        seen.append(f"{cpuinfo} Model: {m.group(1).strip()!r}")
        if profile := profile_for_model(m.group(1)):
            return Detection(profile, seen[-1])
    if m := re.search(r"^Revision\s*:\s*([0-9a-fA-F]+)\s*$", text, re.MULTILINE):
        code = int(m.group(1), 16)
        if code & (1 << 23):  # new-style revision code
            seen.append(f"{cpuinfo} Revision: {m.group(1)}")
            if profile := _REVISION_TYPES.get((code >> 4) & 0xFF):
                return Detection(profile, seen[-1])

    arch = (machine if machine is not None else platform.machine()).lower()
    seen.append(f"CPU architecture {arch!r}")
    if profile := _MACHINES.get(arch):
        return Detection(profile, seen[-1])
    raise ConfigError(f"could not detect this device's hardware profile (read {'; '.join(seen)}): "
                      "pass --profile NAME (see `edgefleet profiles`) or set `profile:` in the config file")
