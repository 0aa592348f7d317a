"""The fleet commands as a user runs them: help, shared options, tables, and the long-running ones."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import free_port, wait_for_port
from test_deploy_support import benchmark, make_package, publish, state

from edgefleet.agent import topics
from edgefleet.deploy.cli import main
from edgefleet.deploy.options import ByteSize, format_bytes
from edgefleet.deploy.store import TelemetryStore
from edgefleet.deploy.tables import (
    Column,
    render_table,
    render_telemetry,
    telemetry_records,
    telemetry_table,
)

FLEET_COMMANDS = ["push", "telemetry", "collect", "broker"]


@pytest.mark.parametrize("name", FLEET_COMMANDS)
def test_every_fleet_command_is_documented(name: str) -> None:
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    command = main.get_command(click.Context(main), name)
    assert command is not None and command.help and len(command.help) > 40
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help"


@pytest.mark.parametrize(
    ("text", "size"), [("65536", 65536), ("256KiB", 262144), ("1 MiB", 1048576), ("64kb", 64000), ("1.5MiB", 1572864)]
)
def test_byte_sizes(text: str, size: int) -> None:
    assert ByteSize().convert(text, None, None) == size


def test_byte_size_limits() -> None:
    with pytest.raises(click.BadParameter, match="between 1 KiB and 64 MiB"):
        ByteSize(1024, 64 * 1024**2).convert("100", None, None)
    assert format_bytes(262144) == "256 KiB" and format_bytes(1536) == "1.5 KiB" and format_bytes(10) == "10 B"


def test_render_table_aligns_columns() -> None:
    text = render_table([Column("NAME"), Column("MS", "right")], [("a", "1.5"), ("longer", None)])
    assert text.splitlines() == ["NAME     MS", "------  ---", "a       1.5", "longer    -"]
    with pytest.raises(ValueError, match="2 columns"):
        render_table(["A", "B"], [("only one",)])


def test_telemetry_table_lists_devices_without_benchmarks(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "fleet.db") as store:
        store.record_state(state("quiet", simulated=False, model=None))
        store.record_benchmark(benchmark("busy", p50=0.0421))
        records = telemetry_records(store.latest_benchmarks(), store.devices())
    assert [r["device"] for r in records] == ["busy", "quiet"]
    lines = render_telemetry(records).splitlines()
    assert "0.042" in lines[2] and "(sim)" in lines[2]
    assert lines[3].split() == ["quiet", "raspberry-pi-4", "-", "-", "-", "-", "-", "-", "-", "-", "-"]
    with TelemetryStore(tmp_path / "fleet.db") as store:
        assert telemetry_table(store.latest_benchmarks(), store.devices()) == "\n".join(lines)


def test_environment_sets_broker_and_home(tmp_path: Path, signing_key: tuple[Path, Path]) -> None:
    with TelemetryStore(tmp_path / "fleet.db") as store:
        store.record_benchmark(benchmark("from-home"))
    result = CliRunner().invoke(main, ["telemetry", "--json"], env={"EDGEFLEET_HOME": str(tmp_path)})
    assert [r["device"] for r in json.loads(result.output)] == ["from-home"]

    nowhere = f"mqtt://127.0.0.1:{free_port()}"
    package = make_package(tmp_path, signing_key)
    result = CliRunner().invoke(main, ["push", str(package), "--device", "d"], env={"EDGEFLEET_BROKER": nowhere})
    assert result.exit_code == 1 and nowhere in result.output


def _edgefleet(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from edgefleet.deploy.cli import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_broker_command_runs_until_interrupted() -> None:
    port = free_port()
    proc = _edgefleet("broker", "--port", str(port))
    try:
        wait_for_port(port)
        publish(f"mqtt://127.0.0.1:{port}", "t", b"hello", retain=True)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert f"listening on mqtt://127.0.0.1:{port}" in out and "broker stopped" in out


def test_collect_command_stores_until_interrupted(broker_url: str, tmp_path: Path, device_id: str) -> None:
    db = tmp_path / "fleet.db"
    proc = _edgefleet("collect", "--broker", broker_url, "--db", str(db), "--interval", "0.2")
    try:
        deadline = time.monotonic() + 10
        found = False
        while not found and time.monotonic() < deadline:
            # Publish until the collector, which subscribes asynchronously, has one stored.
            publish(broker_url, topics.telemetry(device_id), benchmark(device_id).to_bytes())
            time.sleep(0.2)
            if db.exists():
                with TelemetryStore(db) as store:
                    found = any(b.device_id == device_id for b in store.latest_benchmarks())
        assert found
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "subscribed to all devices" in err and "benchmarks" in err
