"""`edgefleet demo` end to end, as a user runs it: embedded broker, compiler, three agent processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_demo_compiles_deploys_benchmarks_and_reports_three_simulated_devices(tmp_path: Path) -> None:
    edgefleet = Path(sys.executable).parent / "edgefleet"
    result = subprocess.run([str(edgefleet), "demo", "--json", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["simulated"] is True
    rows = out["devices"]
    assert {r["profile"] for r in rows} == {"raspberry-pi-zero-2-w", "raspberry-pi-4", "raspberry-pi-5"}
    for row in rows:
        assert row["simulated"] is True
        assert row["power_source"] == "estimate"
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["throughput_ips"] > 0 and row["peak_rss_mb"] > 0 and row["energy_mj"] > 0
        assert row["model"] == "digits@1"
    # The packages, device data and logs stay in the work directory for a look afterwards.
    assert len(list((tmp_path / "packages").glob("*.efpkg"))) == 3
    assert (tmp_path / "fleet.db").exists()


def test_demo_keep_leaves_everything_running_until_stopped(tmp_path: Path) -> None:
    import time

    edgefleet = Path(sys.executable).parent / "edgefleet"
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(edgefleet), "demo", "--keep", "--workdir", str(tmp_path / "w")],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "Press Ctrl-C" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the demo did not get to the point where it waits"
            time.sleep(0.5)
        _check_devices_then_stop(proc, tmp_path / "w", log)
    finally:
        if proc.poll() is None:  # a failed check: stop the demo the way a user would, so it stops its devices
            proc.terminate()
            proc.wait(30)


def _check_devices_then_stop(proc: subprocess.Popen[bytes], workdir: Path, log: Path) -> None:
    import signal

    def agents() -> list[str]:
        found = subprocess.run(["pgrep", "-f", f"edgefleet.agent .*{workdir}"], capture_output=True, text=True).stdout
        return found.split()

    assert len(agents()) == 3, "three agent processes stay up while the demo waits"
    assert "edgefleet telemetry --db" in log.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert agents() == [], "stopping the demo stops its devices"
