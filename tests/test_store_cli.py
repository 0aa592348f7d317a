"""`edgefleet telemetry prune|export` and `collect --shared`: thin commands over the store, on both backends."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from test_deploy_support import benchmark
from test_store_backends import postgres_url, store_location  # noqa: F401  (fixtures)

from edgefleet.deploy.store import TelemetryStore
from edgefleet.deploy.telemetry_cli import collect, telemetry

DOC = (Path(__file__).resolve().parent.parent / "docs" / "fleet.md").read_text()


def _fill(location: str, n: int = 6) -> None:
    with TelemetryStore(location) as store:
        for i in range(n):
            store.record_benchmark(benchmark(f"d{i % 2}", ts=1000.0 + i))


def test_export_csv_and_json_lines(store_location: str, tmp_path: Path) -> None:  # noqa: F811
    _fill(store_location)
    out = tmp_path / "out.csv"
    r = CliRunner().invoke(telemetry, ["export", "--db", store_location, "--format", "csv", "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [float(x["ts"]) for x in rows] == [1000.0 + i for i in range(6)]
    assert rows[0]["device_id"] == "d0" and "report_json" not in rows[0]
    r = CliRunner().invoke(telemetry, ["export", "--db", store_location, "--format", "json", "--device", "d1",
                                       "--since", "1002.5"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["device_id"], x["ts"]) for x in lines] == [("d1", 1003.0), ("d1", 1005.0)]


def test_prune_command(store_location: str) -> None:  # noqa: F811
    _fill(store_location)
    r = CliRunner().invoke(telemetry, ["prune", "--db", store_location, "--older-than", "1d", "--downsample", "1h",
                                       "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"deleted": 4, "rollups": 2, "kept_latest": 2}
    with TelemetryStore(store_location) as store:
        assert [x.count for x in store.rollups()] == [2, 2]
        assert len(store.latest_benchmarks()) == 2
    r = CliRunner().invoke(telemetry, ["--db", store_location, "--json"])  # the table still shows every device
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == 2


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(telemetry, ["prune", "--db", str(tmp_path / "x.db"), "--older-than", "soon"])
    assert r.exit_code == 2 and "not a duration" in r.output
    r = runner.invoke(telemetry, ["prune", "--db", str(tmp_path / "x.db"), "--older-than", "1d"])
    assert r.exit_code == 1 and "no telemetry database" in r.output
    assert not (tmp_path / "x.db").exists()
    r = runner.invoke(telemetry, ["export", "--db", "mysql://h/db"])
    assert r.exit_code == 2 and "--db" in r.output
    r = runner.invoke(collect, ["--db", str(tmp_path / "y.db"), "--shared", "a/b"])
    assert r.exit_code == 2 and "shared-subscription group" in r.output


@pytest.mark.parametrize("name", ["telemetry", "telemetry prune", "telemetry export", "collect"])
def test_commands_and_options_are_documented(name: str) -> None:
    command: click.Command = collect if name == "collect" else telemetry
    if " " in name:
        assert isinstance(telemetry, click.Group)
        command = telemetry.commands[name.split()[1]]
    assert f"edgefleet {name}" in DOC
    assert command.help and len(command.help) > 40
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help"
            assert any(opt in DOC for opt in param.opts), f"docs/fleet.md does not mention {param.opts[0]} of {name}"
