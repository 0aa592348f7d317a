"""The device registry over the store, `edgefleet devices`, and the store's rollout tables (schema 2)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_deploy_support import benchmark, state

from edgefleet.deploy import store as store_module
from edgefleet.deploy.devices_cli import devices
from edgefleet.deploy.registry import (
    DeviceFilter,
    RegistryError,
    device_records,
    find_devices,
    humanize_age,
    render_devices,
    select_devices,
)
from edgefleet.deploy.store import SCHEMA_VERSION, PackageRecord, TelemetryStore


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.db"
    with TelemetryStore(path) as store:
        store.record_state(state("pi-a", groups=["kitchen"], labels={"site": "berlin", "floor": "2"}, ts=1000.0))
        store.record_state(state("pi-b", groups=["kitchen", "north"], labels={"site": "berlin"}, status="online",
                                 ts=1000.0))
        store.record_state(state("pi-b", status="offline", ts=1100.0))
        store.record_state(state("zero-c", profile="raspberry-pi-zero-2-w", groups=["north"], model=None, ts=900.0))
    return path


def test_select_by_profile_group_and_status(db: Path) -> None:
    with TelemetryStore(db) as store:
        rows = store.devices()
    ids = lambda where: [d.device_id for d in select_devices(rows, where)]  # noqa: E731
    assert ids(DeviceFilter()) == ["pi-a", "pi-b", "zero-c"]
    assert ids(DeviceFilter(group="north")) == ["pi-b", "zero-c"]
    assert ids(DeviceFilter(profile="raspberry-pi-4", status="online")) == ["pi-a"]
    assert ids(DeviceFilter(group="north", status="offline")) == ["pi-b"]
    assert [d.device_id for d in find_devices(rows, ["zero-c", "pi-a"])] == ["zero-c", "pi-a"]
    with pytest.raises(RegistryError, match="unknown device.*nope"):
        find_devices(rows, ["pi-a", "nope"])
    assert ids(DeviceFilter(labels={"site": "berlin"})) == ["pi-a", "pi-b"], "the offline state keeps the labels"
    assert ids(DeviceFilter(labels={"site": "berlin", "floor": "2"})) == ["pi-a"], "several labels: all must match"
    assert ids(DeviceFilter(labels={"site": "paris"})) == []
    assert ids(DeviceFilter(group="north", labels={"site": "berlin"})) == ["pi-b"]
    with pytest.raises(ValueError, match="invalid label key"):
        DeviceFilter(labels={"bad key": "x"})
    with pytest.raises(ValueError, match="status"):
        DeviceFilter(status="asleep")


def test_records_and_table(db: Path) -> None:
    with TelemetryStore(db) as store:
        records = device_records(store.devices(), now=1160.0)
    a = records[0]
    assert a == {
        "device": "pi-a", "profile": "raspberry-pi-4", "simulated": True, "status": "online", "groups": ["kitchen"],
        "labels": {"site": "berlin", "floor": "2"}, "package_id": "tiny@1.0:raspberry-pi-4", "model": "tiny@1.0", "runtime": "onnxruntime",
        "agent_version": "0.1.0", "runtimes": {"onnxruntime": "1.17.0"}, "last_seen": 1000.0, "age_s": 160.0,
    }
    table = render_devices(records).splitlines()
    assert table[0].split() == ["DEVICE", "PROFILE", "STATUS", "GROUPS", "LABELS", "MODEL", "AGENT", "RUNTIMES", "LAST", "SEEN"]
    assert "pi-b" in table[3] and "offline" in table[3] and "kitchen,north" in table[3] and table[3].endswith("1m ago")
    assert [humanize_age(s) for s in (3, 125, 7300, 200000)] == ["3s ago", "2m ago", "2h ago", "2d ago"]


def test_devices_command(db: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(devices, ["--db", str(db), "--group", "north", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["device"] for r in json.loads(result.stdout)] == ["pi-b", "zero-c"]
    result = runner.invoke(devices, ["--db", str(db), "--status", "online"])
    assert result.exit_code == 0 and "pi-a" in result.stdout and "pi-b" not in result.stdout
    result = runner.invoke(devices, ["--db", str(db), "--label", "site=berlin", "--label", "floor=2", "--json"])
    assert result.exit_code == 0, result.output
    assert [(r["device"], r["labels"]) for r in json.loads(result.stdout)] == [("pi-a", {"site": "berlin", "floor": "2"})]
    result = runner.invoke(devices, ["--db", str(db)])
    assert "floor=2,site=berlin" in result.stdout
    result = runner.invoke(devices, ["--db", str(db), "--label", "site"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.stderr
    result = runner.invoke(devices, ["--db", str(db), "--label", "site=a b"])
    assert result.exit_code == 2 and "invalid value 'a b' for label 'site'" in result.stderr
    missing = tmp_path / "none.db"
    result = runner.invoke(devices, ["--db", str(missing)])
    assert result.exit_code == 0 and "no devices known yet" in result.stderr and not missing.exists()


def test_a_schema_1_database_is_migrated_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in store_module._MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1)")
    with TelemetryStore(path) as store:
        store.record_state(state("pi-a"))
    with TelemetryStore(path) as store:
        assert [d.device_id for d in store.devices()] == ["pi-a"]
        assert store.rollouts() == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"packages", "rollouts", "rollout_waves", "rollout_devices"} <= tables


def test_package_registry_and_latest_benchmark(tmp_path: Path) -> None:
    with TelemetryStore(tmp_path / "fleet.db") as store:
        assert store.package("tiny@1:raspberry-pi-4") is None
        store.register_package(PackageRecord("tiny@1:raspberry-pi-4", "raspberry-pi-4", "a" * 64, "/p/1.efpkg", 1.0))
        store.register_package(PackageRecord("tiny@1:raspberry-pi-4", "raspberry-pi-4", "b" * 64, "/p/1b.efpkg", 2.0))
        assert store.package("tiny@1:raspberry-pi-4") == PackageRecord(
            "tiny@1:raspberry-pi-4", "raspberry-pi-4", "b" * 64, "/p/1b.efpkg", 2.0)
        store.record_benchmark(benchmark("pi-a", p50=1.0, ts=100.0))
        store.record_benchmark(benchmark("pi-a", p50=2.0, ts=200.0))
        assert store.latest_benchmark("pi-a", "tiny@1.0:raspberry-pi-4").p50_ms == 2.0  # type: ignore[union-attr]
        assert store.latest_benchmark("pi-a", "tiny@1.0:raspberry-pi-4", since=201.0) is None
        assert store.latest_benchmark("pi-b", "tiny@1.0:raspberry-pi-4") is None


def test_claiming_a_rollout_is_compare_and_set(tmp_path: Path) -> None:
    from edgefleet.deploy.store import RolloutRow

    with TelemetryStore(tmp_path / "fleet.db") as store:
        store.save_rollout(RolloutRow("r1", "running", "{}", "", None, 1.0, 1.0), [], [])
        assert store.claim_rollout("r1", "host:1", 5.0, free=None)
        assert not store.claim_rollout("r1", "host:2", 5.0, free=None)
        store.set_rollout_request("r1", "pause")
        store.save_rollout(RolloutRow("r1", "paused", "{}", "why", None, 1.0, 2.0), [], [])
        (row,) = store.rollouts()
        assert (row.status, row.owner, row.request) == ("paused", "host:1", "pause"), "saving keeps other writers' columns"
        store.clear_rollout_request("r1", "abort")
        assert store.rollouts()[0].request == "pause", "only the request handled is cleared"
        store.release_rollout("r1", "host:1")
        assert store.claim_rollout("r1", "host:2", 6.0, free=None)
