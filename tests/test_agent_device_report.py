"""A real (not simulated) agent process on a fake board: its reports carry the sensors' figures."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import AgentProcess, Watcher, forget_device, make_package
from test_agent_power import fake_vcgencmd, hwmon, write

from edgefleet.agent import topics
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.push import push_package


def test_a_device_with_an_ina219_reports_measured_power_idle_and_thermals(
        broker_url: str, signing_key: tuple[Path, Path], tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    hwmon(sysfs, 0, "ina219", {"power1_input": "3200000"})
    write(sysfs / "class" / "thermal" / "thermal_zone0" / "temp", "52500\n")
    write(sysfs / "devices" / "system" / "cpu" / "cpu0" / "cpufreq" / "scaling_governor", "ondemand\n")
    vcgencmd = fake_vcgencmd(tmp_path, pmic=None, throttled="throttled=0x80000")
    device_id = f"test-sensors-{uuid.uuid4().hex[:8]}"
    url = BrokerURL.parse(broker_url)
    watcher = Watcher(broker_url, f"edgefleet/v1/devices/{device_id}/#")
    agent = AgentProcess(broker_url, device_id, tmp_path / "data", signing_key[1],
                         extra=("--sysfs", str(sysfs), "--vcgencmd", vcgencmd, "--idle-seconds", "0.2",
                                "--system-interval", "0.5"))
    agent.argv.remove("--simulate")
    agent.start()
    ref = None
    try:
        watcher.wait_for(lambda t, m: t.endswith("/state") and m["status"] == "online", timeout=30)
        deployment = push_package(make_package(tmp_path / "p.efpkg", signing_key[0]), broker=url, device=device_id)
        ref = deployment.package
        _, report = watcher.wait_for(lambda t, m: t.endswith("/telemetry") and m.get("kind") == "benchmark")
        assert report["simulated"] is False
        assert report["power"]["source"] == "hwmon:ina219"
        assert report["power"]["watts"] == pytest.approx(3.2) and report["power"]["idle_watts"] == pytest.approx(3.2)
        assert report["energy_above_idle_mj"] == pytest.approx(0.0, abs=1e-9) and report["energy_mj"] > 0
        assert report["temperature_before_c"] == 52.5 and report["temperature_after_c"] == 52.5
        assert report["throttled"] == ["soft-temperature-limit-occurred"] and report["governor"] == "ondemand"
        assert "power from hwmon:ina219" in agent.log()
        # System samples follow, and count what the agent did: 3 test vectors, 1 + 2 warm-up + 20 timed runs.
        _, sample = watcher.wait_for(lambda t, m: t == topics.system(device_id) and m["benchmarks"] == 1, timeout=15)
        assert sample["kind"] == "system" and sample["deployments_done"] == 1 and sample["inferences"] == 26
        assert sample["model_package_id"] == "tiny@1:raspberry-pi-4" and sample["temperature_c"] == 52.5
        assert sample["memory_total_mb"] > sample["memory_used_mb"] > 0 and sample["uptime_s"] > 0
    finally:
        agent.stop()
        watcher.close()
        forget_device(broker_url, device_id, [ref] if ref is not None else [])
