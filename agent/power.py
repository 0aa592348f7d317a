"""Board power: from the best sensor the device has, otherwise the profile's estimate.

Every figure names its source, so a watt from a real INA219 is never confused with a number a
power model made up. ``find_power_source`` tries, in order (the first that reads wins):

    jetson        NVIDIA Jetson INA3221 rails (hwmon ``ina3221`` with VDD_/POM_ labels, or the
                  older ``ina3221x`` IIO driver); the board's input rail when one is labelled so
    hwmon:<chip>  an INA219/INA226/INA3221-family sensor under ``class/hwmon`` (``power*_input`` in
                  microwatts, else ``in*_input`` mV x ``curr*_input`` mA), summed over its channels
    pmic          the Raspberry Pi 5 PMIC through ``vcgencmd pmic_read_adc`` (sum of V x A over rails)
    battery       a discharging ``class/power_supply`` battery (``power_now``, or current x voltage)
    rapl          Intel RAPL package energy counters (``class/powercap/intel-rapl:N/energy_uj``):
                  the CPU package only, not the whole board
    estimate      the hardware profile's linear power model, driven by CPU utilisation

A simulated device always uses the estimate: the host's sensors say nothing about the board it
pretends to be.

Sources are measured over an interval: ``start()`` then ``stop(cpu_utilisation)`` returns the
average watts in between. Counters (RAPL) take the energy difference; instantaneous sensors are
sampled by a background thread every ``interval`` seconds and averaged. Reading a sensor raises
``OSError`` (file gone, permission, command failed) or ``ValueError`` (unparseable output).
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgefleet.hardware_profiles import HardwareProfile

log = logging.getLogger(__name__)

ESTIMATE = "estimate"
RAPL = "rapl"
PMIC = "pmic"
BATTERY = "battery"
JETSON = "jetson"

# The INA2xx family of current/power monitors (Linux drivers ina2xx, ina238, ina3221).
_INA_CHIPS = re.compile(r"^ina\d+")
# Jetson rail labels that measure the whole board's input, in order of preference.
_JETSON_TOTAL = ("VDD_IN", "POM_5V_IN", "VDD_5V0_IN", "SYS_5V0", "VIN_SYS_5V0")
_JETSON_LABEL = re.compile(r"^(VDD_|POM_|VIN_|SYS_)")
_READ_ERRORS = (OSError, ValueError)


class PowerSource(Protocol):
    @property
    def name(self) -> str:
        """Where the figures come from: 'hwmon:ina219', 'pmic', ..., 'estimate'."""
        ...

    @property
    def measured(self) -> bool:
        """True for a sensor, False for a model's estimate."""
        ...

    def probe(self) -> None:
        """Raise OSError or ValueError if the source cannot be read here."""
        ...

    def read_w(self, cpu_utilisation: float) -> float:
        """Board power in watts now; ``cpu_utilisation`` (0..1 of all cores) drives estimates."""
        ...

    def start(self) -> None:
        """Begin measuring an interval."""
        ...

    def stop(self, cpu_utilisation: float) -> float:
        """Average watts since ``start()``; estimates use ``cpu_utilisation`` over the interval."""
        ...


@dataclass(frozen=True, slots=True)
class ProfileEstimate:
    """The profile's linear power model: idle watts plus a share of (active - idle) by CPU load."""

    profile: HardwareProfile
    name: str = ESTIMATE
    measured: bool = False

    def read_w(self, cpu_utilisation: float) -> float:
        return self.profile.power.estimate_w(cpu_utilisation)

    def probe(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self, cpu_utilisation: float) -> float:
        return self.read_w(cpu_utilisation)


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _channel(path: Path) -> str:
    """'3' for ``power3_input`` or ``in_power3_input``."""
    m = re.search(r"(\d+)_input$", path.name)
    if m is None:
        raise ValueError(f"{path}: not a numbered channel")
    return m.group(1)


class SampledSource:
    """An instantaneous sensor, averaged over an interval by a background sampling thread."""

    measured = True

    def __init__(self, name: str, read: Callable[[], float], *, interval: float = 0.1) -> None:
        if interval <= 0:
            raise ValueError("the power sampling interval must be positive")
        self.name = name
        self._read = read
        self.interval = interval
        self._samples: list[float] = []
        self._errors: list[BaseException] = []
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def read_w(self, cpu_utilisation: float = 0.0) -> float:
        return self._read()

    def probe(self) -> None:
        """Read once, so a missing file, a permission or a format problem shows now."""
        self._read()

    def start(self) -> None:
        self._samples = [self._read()]
        self._errors = []
        self._done.clear()
        self._thread = threading.Thread(target=self._sample, name=f"power-{self.name}", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self._samples.append(self._read())
            except _READ_ERRORS as exc:  # keep sampling; stop() reports if nothing could be read
                self._errors.append(exc)

    def stop(self, cpu_utilisation: float = 0.0) -> float:
        if self._thread is None:
            raise RuntimeError("stop() without start()")
        self._done.set()
        self._thread.join()
        self._thread = None
        self._samples.append(self._read())
        if self._errors:
            log.warning("power source %s: %d of %d readings failed, last: %s", self.name, len(self._errors),
                        len(self._errors) + len(self._samples), self._errors[-1])
        return sum(self._samples) / len(self._samples)

    def __repr__(self) -> str:
        return f"SampledSource({self.name!r})"


# --- hwmon INA2xx ----------------------------------------------------------------------------


def _hwmon_reader(hwmon: Path, channels: Sequence[str] | None = None) -> Callable[[], float] | None:
    """A function reading watts from one hwmon device's channels, or None if it has no power channel."""
    power = {_channel(p): p for p in hwmon.glob("power*_input")}
    if power:
        paths = [power[c] for c in channels if c in power] if channels else list(power.values())
        return lambda: sum(_read_int(p) for p in paths) / 1e6  # microwatts
    volts = {_channel(p): p for p in hwmon.glob("in*_input")}
    amps = {_channel(p): p for p in hwmon.glob("curr*_input")}
    pairs = sorted(set(volts) & set(amps))
    if channels:
        pairs = [c for c in pairs if c in channels]
    if not pairs:
        return None
    return lambda: sum(_read_int(volts[c]) * _read_int(amps[c]) for c in pairs) / 1e6  # mV x mA


def _labels(directory: Path, pattern: str) -> dict[str, str]:
    """Channel number -> label, from files such as ``in1_label`` or ``rail_name_0``."""
    out = {}
    for p in directory.glob(pattern):
        m = re.search(r"(\d+)", p.name)
        if m is not None:
            try:
                out[m.group(1)] = p.read_text().strip()
            except OSError:
                continue
    return out


def _pick_total(labels: dict[str, str]) -> list[str] | None:
    """The channel of the board's input rail, if one is labelled so."""
    for total in _JETSON_TOTAL:
        for channel, label in labels.items():
            if label.upper() == total:
                return [channel]
    return None


def hwmon_sources(sysfs: Path) -> list[SampledSource]:
    sources = []
    for hwmon in sorted((sysfs / "class" / "hwmon").glob("hwmon*")):
        try:
            chip = (hwmon / "name").read_text().strip()
        except OSError:
            continue
        if not _INA_CHIPS.match(chip):
            continue
        labels = _labels(hwmon, "in*_label")
        jetson = chip.startswith("ina3221") and any(_JETSON_LABEL.match(v) for v in labels.values())
        channels = _pick_total(labels) if jetson else None
        read = _hwmon_reader(hwmon, channels)
        if read is None:
            continue
        name = JETSON if jetson else f"hwmon:{chip}"
        sources.append(SampledSource(name, read))
    return sources


def jetson_iio_sources(sysfs: Path) -> list[SampledSource]:
    """The L4T ``ina3221x`` IIO driver: ``in_power{N}_input`` in milliwatts, ``rail_name_{N}``."""
    sources = []
    for device in sorted((sysfs / "bus" / "i2c" / "drivers" / "ina3221x").glob("*/iio:device*")):
        power = {_channel(p): p for p in device.glob("in_power*_input")}
        if not power:
            continue
        chosen = _pick_total(_labels(device, "rail_name_*")) or sorted(power)
        paths = [power[c] for c in chosen if c in power]
        sources.append(SampledSource(JETSON, _milliwatts_reader(paths)))
    return sources


def _milliwatts_reader(paths: list[Path]) -> Callable[[], float]:
    return lambda: sum(_read_int(p) for p in paths) / 1e3


# --- Raspberry Pi 5 PMIC -------------------------------------------------------------------

_PMIC_LINE = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([-+0-9.eE]+)[AV]\s*$")


def parse_pmic(output: str) -> float:
    """Watts from ``vcgencmd pmic_read_adc``: the sum of V x A over rails that report both."""
    volts: dict[str, float] = {}
    amps: dict[str, float] = {}
    for line in output.splitlines():
        m = _PMIC_LINE.match(line)
        if m:
            rail, unit, value = m.groups()
            (amps if unit == "A" else volts)[rail] = float(value)
    rails = set(volts) & set(amps)
    if not rails:
        raise ValueError(f"no rail with both a voltage and a current in pmic_read_adc output: {output[:200]!r}")
    return sum(volts[r] * amps[r] for r in rails)


def run_vcgencmd(vcgencmd: str, *args: str, timeout: float = 5.0) -> str:
    """The output of ``vcgencmd ARGS``; OSError if it cannot run or fails."""
    try:
        result = subprocess.run([vcgencmd, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.SubprocessError as exc:  # a timeout
        raise OSError(f"{vcgencmd} {' '.join(args)}: {exc}") from None
    if result.returncode != 0:
        raise OSError(f"{vcgencmd} {' '.join(args)} exited {result.returncode}: {result.stderr.strip()[:200]}")
    return result.stdout


def pmic_source(vcgencmd: str) -> SampledSource:
    # A process per reading: sample less often than a sysfs file.
    return SampledSource(PMIC, lambda: parse_pmic(run_vcgencmd(vcgencmd, "pmic_read_adc")), interval=0.5)


# --- battery ---------------------------------------------------------------------------------


def _battery_reader(supply: Path) -> Callable[[], float]:
    def read() -> float:
        status = (supply / "status").read_text().strip()
        if status != "Discharging":
            raise ValueError(f"battery {supply.name} is {status.lower()}, so it does not measure the system's draw")
        if (supply / "power_now").exists():
            return _read_int(supply / "power_now") / 1e6  # microwatts
        return _read_int(supply / "current_now") * _read_int(supply / "voltage_now") / 1e12  # uA x uV

    return read


def battery_sources(sysfs: Path) -> list[SampledSource]:
    sources = []
    for supply in sorted((sysfs / "class" / "power_supply").glob("*")):
        try:
            if (supply / "type").read_text().strip() != "Battery":
                continue
        except OSError:
            continue
        sources.append(SampledSource(BATTERY, _battery_reader(supply)))
    return sources


# --- Intel RAPL ------------------------------------------------------------------------------


@dataclass
class RaplCounter:
    """Intel RAPL package domains: watts are energy differences over time, with counter wraparound."""

    domains: list[Path]  # the ``intel-rapl:N`` directories (packages; subdomains are inside them)
    name: str = RAPL
    measured: bool = True
    clock: Callable[[], float] = time.monotonic
    _start: tuple[float, list[int]] | None = field(default=None, repr=False)

    def probe(self) -> None:
        """Read the counters (often root-only since CVE-2020-8694) and their wraparound ranges."""
        self._energy()
        for d in self.domains:
            _read_int(d / "max_energy_range_uj")

    def _energy(self) -> list[int]:
        return [_read_int(d / "energy_uj") for d in self.domains]

    def start(self) -> None:
        self._start = (self.clock(), self._energy())

    def stop(self, cpu_utilisation: float = 0.0) -> float:
        if self._start is None:
            raise RuntimeError("stop() without start()")
        t0, e0 = self._start
        e1, t1 = self._energy(), self.clock()
        self._start = None
        if t1 <= t0:
            raise ValueError("no time passed between RAPL readings")
        joules = 0.0
        for domain, before, after in zip(self.domains, e0, e1, strict=True):
            delta = after - before
            if delta < 0:  # the counter wrapped around
                delta += _read_int(domain / "max_energy_range_uj") + 1
            joules += delta / 1e6
        return joules / (t1 - t0)

    def read_w(self, cpu_utilisation: float = 0.0) -> float:
        self.start()
        time.sleep(0.1)
        return self.stop()


def rapl_sources(sysfs: Path) -> list[RaplCounter]:
    domains = [d for d in sorted((sysfs / "class" / "powercap").glob("intel-rapl:*"))
               if re.fullmatch(r"intel-rapl:\d+", d.name)]
    return [RaplCounter(domains)] if domains else []


# --- choosing --------------------------------------------------------------------------------


def candidate_sources(*, sysfs: Path = Path("/sys"), vcgencmd: str = "vcgencmd") -> list[PowerSource]:
    """Every sensor-backed source that might exist here, best first (not yet checked by reading)."""
    hwmon = hwmon_sources(sysfs)
    candidates: list[PowerSource] = [s for s in hwmon if s.name == JETSON]
    candidates += jetson_iio_sources(sysfs)
    candidates += [s for s in hwmon if s.name != JETSON]
    candidates.append(pmic_source(vcgencmd))
    candidates += battery_sources(sysfs)
    candidates += rapl_sources(sysfs)
    return candidates


def find_power_source(profile: HardwareProfile, *, sysfs: Path = Path("/sys"), vcgencmd: str = "vcgencmd",
                      simulated: bool = False, logger: logging.Logger | None = None) -> PowerSource:
    """The best power source on this device: the first candidate that gives a reading, else the estimate."""
    logger = logger or log
    if not simulated:
        for source in candidate_sources(sysfs=sysfs, vcgencmd=vcgencmd):
            try:
                source.probe()
            except _READ_ERRORS as exc:
                logger.debug("power source %s is not usable: %s", source.name, exc)
                continue
            logger.info("power from %s", source.name)
            return source
    logger.info("power from the %s profile's estimate%s", profile.name, " (simulated device)" if simulated else
                " (no power sensor found)")
    return ProfileEstimate(profile)
