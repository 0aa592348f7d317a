"""The machinery of ``bench/fleet_scale.py`` at 50 devices: a staged rollout completes and no telemetry is lost.

Correctness only; the figures (rates, page times) are the benchmark's to print, never asserted here.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/ is scripts, not a package

import fleet_scale


def test_a_small_simulated_fleet_rolls_out_ingests_and_serves(tmp_path: Path) -> None:
    config = fleet_scale.BenchConfig(devices=50, processes=2, telemetry=20, canary=2, waves=(50.0, 100.0),
                                     requests=2, device_timeout=60)
    result = fleet_scale.run_bench(config, tmp_path)

    assert result.rollout_status == "completed"
    assert [(w["wave"], w["devices"], w["status"]) for w in result.waves] == [
        ("canary", 2, "passed"), ("50%", 23, "passed"), ("100%", 25, "passed")]
    assert result.devices_done == result.devices_running_new == 50 and result.devices_failed == 0
    assert result.published == result.drain_published == 50 * 20
    assert result.stored == result.published and result.drain_stored == result.drain_published and result.lost == 0
    assert result.rejected == 0 and result.store_errors == 0
    assert set(result.pages) == {"/devices", "/devices.json", "/devices/" + result.sample_device,
                                 f"/devices/{result.sample_device}.json", f"/rollouts/{result.rollout_id}",
                                 f"/rollouts/{result.rollout_id}.json"}
    assert "| Telemetry lost, both phases | 0 |" in fleet_scale.render(result, config)
