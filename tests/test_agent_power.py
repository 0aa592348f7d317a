"""Power, temperature and throttling from fake sysfs trees and a fake vcgencmd: real files, real parsing."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent import thermal
from edgefleet.agent.benchmark import BenchmarkSettings, DeviceProbe, measure
from edgefleet.agent.messages import BenchmarkReport
from edgefleet.agent.power import (
    ProfileEstimate,
    RaplCounter,
    find_power_source,
    parse_pmic,
)
from edgefleet.hardware_profiles import load_profile

PI5 = load_profile("raspberry-pi-5")
NO_VCGENCMD = "/nonexistent/vcgencmd"

PMIC_OUTPUT = """\
 3V7_WL_SW_A current(0)=0.10000000A
   3V3_SYS_A current(1)=0.20000000A
   1V8_SYS_A current(2)=0.50000000A
     VDD_CORE_A current(7)=2.00000000A
 3V7_WL_SW_V volt(8)=3.70000000V
   3V3_SYS_V volt(9)=3.30000000V
   1V8_SYS_V volt(10)=1.80000000V
     VDD_CORE_V volt(15)=0.80000000V
     EXT5V_V volt(24)=5.10000000V
        BATT_V volt(25)=0.00000000V
"""
PMIC_WATTS = 0.1 * 3.7 + 0.2 * 3.3 + 0.5 * 1.8 + 2.0 * 0.8


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def fake_vcgencmd(tmp_path: Path, pmic: str | None = PMIC_OUTPUT, throttled: str = "throttled=0x0") -> str:
    """A shell script that answers like vcgencmd (and exits 255 for a command it does not know)."""
    script = tmp_path / "vcgencmd"
    body = ['#!/bin/sh', 'case "$1" in']
    if pmic is not None:
        (tmp_path / "pmic.txt").write_text(pmic)
        body.append(f'  pmic_read_adc) cat "{tmp_path / "pmic.txt"}" ;;')
    body += [f'  get_throttled) echo "{throttled}" ;;',
             '  *) echo "error=2 error_msg=\\"Command not registered\\"" >&2; exit 255 ;;',
             'esac']
    script.write_text("\n".join(body) + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def hwmon(sysfs: Path, n: int, chip: str, files: dict[str, str]) -> Path:
    d = sysfs / "class" / "hwmon" / f"hwmon{n}"
    write(d / "name", chip + "\n")
    for name, value in files.items():
        write(d / name, value + "\n")
    return d


def find(sysfs: Path, vcgencmd: str = NO_VCGENCMD, **kw):  # type: ignore[no-untyped-def]
    return find_power_source(PI5, sysfs=sysfs, vcgencmd=vcgencmd, **kw)


# --- sources ---------------------------------------------------------------------------------


def test_ina219_power_channel_in_microwatts(tmp_path: Path) -> None:
    hwmon(tmp_path, 0, "cpu_thermal", {"temp1_input": "45000"})  # not a power sensor: skipped
    hwmon(tmp_path, 1, "ina219", {"power1_input": "2500000", "in1_input": "5000", "curr1_input": "400"})
    source = find(tmp_path)
    assert source.name == "hwmon:ina219" and source.measured
    assert source.read_w(0.0) == pytest.approx(2.5)


def test_ina226_without_a_power_channel_multiplies_millivolts_by_milliamps(tmp_path: Path) -> None:
    hwmon(tmp_path, 0, "ina226", {"in1_input": "5100", "curr1_input": "600"})
    source = find(tmp_path)
    assert source.name == "hwmon:ina226"
    assert source.read_w(0.0) == pytest.approx(5.1 * 0.6)


def test_generic_ina3221_sums_its_channels(tmp_path: Path) -> None:
    hwmon(tmp_path, 0, "ina3221", {"in1_input": "5000", "curr1_input": "100", "in2_input": "3300",
                                   "curr2_input": "200", "in4_input": "10"})  # in4 is a shunt voltage: no curr4
    source = find(tmp_path)
    assert source.name == "hwmon:ina3221"
    assert source.read_w(0.0) == pytest.approx(0.5 + 0.66)


def test_jetson_hwmon_rails_use_the_input_rail(tmp_path: Path) -> None:
    hwmon(tmp_path, 0, "ina226", {"power1_input": "1000000"})  # a user's sensor ranks below the board's own
    hwmon(tmp_path, 1, "ina3221", {"in1_label": "VDD_IN", "in1_input": "5000", "curr1_input": "1200",
                                   "in2_label": "VDD_CPU_GPU_CV", "in2_input": "5000", "curr2_input": "500",
                                   "in3_label": "VDD_SOC", "in3_input": "5000", "curr3_input": "300"})
    source = find(tmp_path)
    assert source.name == "jetson"
    assert source.read_w(0.0) == pytest.approx(6.0), "VDD_IN alone: the other rails are inside it"


def test_jetson_iio_driver_in_milliwatts(tmp_path: Path) -> None:
    dev = tmp_path / "bus" / "i2c" / "drivers" / "ina3221x" / "6-0040" / "iio:device0"
    for i, (rail, mw) in enumerate([("POM_5V_IN", "4200"), ("POM_5V_GPU", "800"), ("POM_5V_CPU", "1100")]):
        write(dev / f"rail_name_{i}", rail + "\n")
        write(dev / f"in_power{i}_input", mw + "\n")
    source = find(tmp_path)
    assert source.name == "jetson"
    assert source.read_w(0.0) == pytest.approx(4.2)


def test_pi5_pmic_sums_volts_times_amps_over_rails(tmp_path: Path) -> None:
    assert parse_pmic(PMIC_OUTPUT) == pytest.approx(PMIC_WATTS)
    source = find(tmp_path / "sys", fake_vcgencmd(tmp_path))
    assert source.name == "pmic"
    assert source.read_w(0.0) == pytest.approx(PMIC_WATTS)


def test_a_vcgencmd_without_pmic_support_is_not_a_source(tmp_path: Path) -> None:
    source = find(tmp_path / "sys", fake_vcgencmd(tmp_path, pmic=None))  # a Pi 4's firmware
    assert source.name == "estimate"
    with pytest.raises(ValueError, match="no rail"):
        parse_pmic("error=2 error_msg=\"Command not registered\"")


def _battery(sysfs: Path, status: str, **values: str) -> Path:
    d = sysfs / "class" / "power_supply" / "BAT0"
    write(d / "type", "Battery\n")
    write(d / "status", status + "\n")
    for k, v in values.items():
        write(d / k, v + "\n")
    write(sysfs / "class" / "power_supply" / "AC" / "type", "Mains\n")
    return d


def test_a_discharging_battery_current_times_voltage(tmp_path: Path) -> None:
    _battery(tmp_path, "Discharging", current_now="800000", voltage_now="12000000")
    source = find(tmp_path)
    assert source.name == "battery"
    assert source.read_w(0.0) == pytest.approx(9.6)


def test_a_battery_power_now_and_a_charging_battery(tmp_path: Path) -> None:
    bat = _battery(tmp_path, "Discharging", power_now="7500000")
    assert find(tmp_path).read_w(0.0) == pytest.approx(7.5)
    (bat / "status").write_text("Charging\n")
    assert find(tmp_path).name == "estimate", "a charging battery's current is not the system's draw"


def _rapl(sysfs: Path, n: int, energy: int, max_range: int = 262143328850) -> Path:
    d = sysfs / "class" / "powercap" / f"intel-rapl:{n}"
    write(d / "energy_uj", f"{energy}\n")
    write(d / "max_energy_range_uj", f"{max_range}\n")
    write(d / "name", f"package-{n}\n")
    write(d / f"intel-rapl:{n}:0" / "energy_uj", "5\n")  # a core subdomain: inside the package, not added
    return d


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rapl_is_energy_over_time_summed_over_packages(tmp_path: Path) -> None:
    p0, p1 = _rapl(tmp_path, 0, 1_000_000), _rapl(tmp_path, 1, 5_000_000)
    source = find(tmp_path)
    assert isinstance(source, RaplCounter) and source.name == "rapl"
    assert [d.name for d in source.domains] == ["intel-rapl:0", "intel-rapl:1"]
    source.clock = clock = FakeClock()
    source.start()
    (p0 / "energy_uj").write_text("7000000\n")  # +6 J
    (p1 / "energy_uj").write_text("9000000\n")  # +4 J
    clock.now += 2.0
    assert source.stop() == pytest.approx(5.0)


def test_rapl_counter_wraparound(tmp_path: Path) -> None:
    d = _rapl(tmp_path, 0, 999_000_000, max_range=999_999_999)
    source = RaplCounter([d], clock=(clock := FakeClock()))
    source.start()
    (d / "energy_uj").write_text("1000000\n")  # wrapped: 1_000_000 uJ to the top, then 1_000_000 from zero
    clock.now += 1.0
    assert source.stop() == pytest.approx(2.000001, rel=1e-6)


def test_unreadable_rapl_counters_are_skipped(tmp_path: Path) -> None:
    d = _rapl(tmp_path, 0, 1)
    (d / "energy_uj").write_text("not a number\n")  # stands in for root-only counters: the read fails
    assert find(tmp_path).name == "estimate"


def test_preference_order_and_simulated_devices(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _rapl(tmp_path, 0, 1)
    _battery(tmp_path, "Discharging", power_now="7500000")
    vcgencmd = fake_vcgencmd(tmp_path)
    assert find(tmp_path, vcgencmd).name == "pmic"
    hwmon(tmp_path, 0, "ina219", {"power1_input": "2000000"})
    with caplog.at_level(logging.INFO):
        assert find(tmp_path, vcgencmd).name == "hwmon:ina219"
    assert "power from hwmon:ina219" in caplog.text
    assert find(tmp_path, vcgencmd, simulated=True).name == "estimate"


def test_a_sampled_source_averages_over_the_interval(tmp_path: Path) -> None:
    d = hwmon(tmp_path, 0, "ina219", {"power1_input": "1000000"})
    source = find(tmp_path)
    source.interval = 0.01  # type: ignore[attr-defined]
    source.start()
    time.sleep(0.1)
    (d / "power1_input").write_text("3000000\n")
    time.sleep(0.1)
    watts = source.stop(0.0)
    assert 1.5 < watts < 2.5


# --- temperature, throttling, governor ------------------------------------------------------


def test_thermal_zones_throttling_and_governor(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    write(sysfs / "class" / "thermal" / "thermal_zone0" / "temp", "48312\n")
    write(sysfs / "class" / "thermal" / "thermal_zone1" / "temp", "61000\n")
    (sysfs / "class" / "thermal" / "thermal_zone2").mkdir()  # no temp file: skipped
    write(sysfs / "devices" / "system" / "cpu" / "cpu0" / "cpufreq" / "scaling_governor", "ondemand\n")
    assert thermal.temperature_c(sysfs) == pytest.approx(61.0)
    assert thermal.governor(sysfs) == "ondemand"
    assert thermal.throttled_flags(fake_vcgencmd(tmp_path, throttled="throttled=0x50005")) == [
        "under-voltage", "throttled", "under-voltage-occurred", "throttled-occurred"]
    assert thermal.throttled_flags(fake_vcgencmd(tmp_path)) == []
    assert thermal.throttled_flags(NO_VCGENCMD) is None
    assert thermal.temperature_c(tmp_path / "empty") is None and thermal.governor(tmp_path / "empty") is None


# --- the benchmark with a measured source ---------------------------------------------------


class SleepyModel:
    runtime, version, threads = "fake", "0", 1

    def input_names(self) -> list[str]:
        return ["x"]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        time.sleep(0.002)
        return [feeds["x"]]


class StepSource:
    """A measured source that reads 1 W idle and 4 W under load (or fails, when told to)."""

    name, measured = "hwmon:fake", True

    def __init__(self, fail_in_run: bool = False) -> None:
        self.fail_in_run, self.calls = fail_in_run, 0

    def probe(self) -> None:
        pass

    def read_w(self, cpu_utilisation: float) -> float:
        return 1.0

    def start(self) -> None:
        self.calls += 1

    def stop(self, cpu_utilisation: float) -> float:
        if self.fail_in_run and self.calls > 1:
            raise OSError("sensor unplugged")
        return 1.0 if self.calls == 1 else 4.0


def test_measure_reports_idle_baseline_above_idle_energy_and_thermals(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    write(sysfs / "class" / "thermal" / "thermal_zone0" / "temp", "50000\n")
    write(sysfs / "devices" / "system" / "cpu" / "cpu0" / "cpufreq" / "scaling_governor", "performance\n")
    settings = BenchmarkSettings(warmup=1, runs=10, idle_seconds=0.05)
    feeds = {"x": np.zeros((1, 4), np.float32)}
    probe = DeviceProbe(sysfs=sysfs, vcgencmd=fake_vcgencmd(tmp_path, throttled="throttled=0x20000"))
    m = measure(SleepyModel(), feeds, settings, StepSource(), cores=4, fallback=ProfileEstimate(PI5), probe=probe)
    assert m.power.source == "hwmon:fake" and m.power.watts == 4.0 and m.power.idle_watts == 1.0
    assert m.power.seconds is not None and m.power.seconds > 0.015
    mean_s = m.latency.mean / 1e3
    assert m.energy_mj == pytest.approx(4.0 * mean_s * 1e3)
    assert m.energy_above_idle_mj == pytest.approx(3.0 * mean_s * 1e3)
    assert m.temperature_before_c == 50.0 and m.temperature_after_c == 50.0
    assert m.throttled == ["frequency-capped-occurred"] and m.governor == "performance"


def test_a_sensor_failing_mid_run_falls_back_to_the_estimate_and_says_so() -> None:
    settings = BenchmarkSettings(warmup=0, runs=5, idle_seconds=0.01)
    m = measure(SleepyModel(), {"x": np.zeros(1)}, settings, StepSource(fail_in_run=True), cores=4,
                fallback=ProfileEstimate(PI5))
    assert m.power.source == "estimate" and m.power.idle_watts == PI5.power.idle_w and m.power.seconds is None
    assert m.temperature_before_c is None and m.throttled is None  # no probe: a simulated device


def test_old_reports_still_parse_and_new_fields_are_optional() -> None:
    report = {"kind": "benchmark", "device_id": "d", "profile": "p", "simulated": False, "package_id": "x",
              "model_name": "m", "model_version": "1", "runtime": "r", "runtime_version": "1", "threads": 1,
              "warmup": 1, "runs": 1, "load_ms": 1, "first_inference_ms": 1,
              "latency_ms": {k: 1 for k in ("mean", "std", "min", "p50", "p90", "p99", "max")},
              "throughput_ips": 1, "peak_rss_mb": 1, "cpu_percent": 1, "power": {"watts": 1, "source": "estimate"},
              "energy_mj": 1}
    parsed = BenchmarkReport.model_validate(report)
    assert parsed.energy_above_idle_mj is None and parsed.throttled is None
    assert b"throttled" not in parsed.to_bytes()
