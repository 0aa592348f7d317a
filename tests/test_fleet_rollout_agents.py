"""`edgefleet rollout` end to end: three real agent processes in one group, the real Mosquitto.

The tests share the agents and run in order: a good rollout, a bad package that the canary
refuses (abort and rollback), a rollout whose process is killed mid-wait and resumed, and one
that another process aborts while it waits between waves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import AgentProcess, Watcher, clear_retained, make_package

from edgefleet.agent import topics
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.cli import main
from edgefleet.deploy.push import (
    clear_deployment,
    clear_package,
    describe_package,
    fleet_states,
)
from edgefleet.deploy.store import TelemetryStore

_PACKAGES: list[Path] = []


@pytest.fixture(scope="module")
def fleet(broker_url: str, signing_key: tuple[Path, Path],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str], Path]]:
    """(group, device ids, database path) with every device online."""
    run = uuid.uuid4().hex[:6]  # unique: other test runs may share the broker
    group = f"rollout-{run}"
    ids = [f"test-ro-{run}-{i}" for i in range(3)]
    workdir = tmp_path_factory.mktemp("fleet")
    url = BrokerURL.parse(broker_url)
    watcher = Watcher(broker_url, *(topics.state(d) for d in ids))
    agents = [AgentProcess(broker_url, d, workdir / d, signing_key[1], extra=("--group", group)).start() for d in ids]
    try:
        for d in ids:
            watcher.wait_for(lambda t, m, d=d: m.get("device_id") == d and m["status"] == "online", timeout=30)
        yield group, ids, workdir / "fleet.db"
    finally:
        for agent in agents:
            agent.stop()
        watcher.close()
        for d in ids:
            clear_deployment(url, device=d)
            clear_retained(broker_url, topics.state(d))
        for package in _PACKAGES:
            clear_package(url, describe_package(package)[1])


def _package(tmp_path: Path, key: Path, version: str, **kw: object) -> Path:
    path = make_package(tmp_path / f"tiny-{version}.efpkg", key, version=version, **kw)  # type: ignore[arg-type]
    _PACKAGES.append(path)
    return path


def _installed(broker_url: str, ids: list[str], expected: str, timeout: float = 15) -> dict[str, str | None]:
    """What each device reports running, from its retained state (published just after its last event)."""
    deadline = time.monotonic() + timeout
    while True:
        states = {s.device_id: s for s in fleet_states(BrokerURL.parse(broker_url), settle=0.2) if s.device_id in ids}
        running = {d: s.model.package_id if s.model else None for d, s in states.items()}
        if running == dict.fromkeys(ids, expected) or time.monotonic() > deadline:
            return running


def test_canary_then_waves_installs_everywhere(fleet, broker_url: str, signing_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    group, ids, db = fleet
    v1 = _package(tmp_path, signing_key[0], "1")
    result = CliRunner().invoke(main, ["rollout", "start", str(v1), "--group", group, "--canary", "1",
                                       "--waves", "50,100", "--broker", broker_url, "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "completed"
    assert [(w["label"], w["status"], len(w["devices"])) for w in record["waves"]] == [
        ("canary", "passed", 1), ("50%", "passed", 1), ("100%", "passed", 1)]
    assert all(d["phase"] == "done" and d["p90_ms"] > 0 for d in record["devices"])
    assert _installed(broker_url, ids, "tiny@1:raspberry-pi-4") == dict.fromkeys(ids, "tiny@1:raspberry-pi-4")

    result = CliRunner().invoke(main, ["devices", "--group", group, "--db", str(db), "--json"])
    assert result.exit_code == 0
    assert [(r["device"], r["profile"], r["status"]) for r in json.loads(result.stdout)] == [
        (d, "raspberry-pi-4", "online") for d in ids]


def test_a_package_failing_on_the_canary_aborts_and_rolls_back(fleet, broker_url: str, signing_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    group, ids, db = fleet
    bad = _package(tmp_path, signing_key[0], "2", expected_shift=1.0)
    result = CliRunner().invoke(main, ["rollout", "start", str(bad), "--group", group, "--canary", ids[1],
                                       "--waves", "100", "--max-failure-rate", "0.1", "--broker", broker_url,
                                       "--db", str(db), "--json"])
    assert result.exit_code == 1, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "aborted" and "wave canary: 1 of 1 device(s) failed" in record["reason"]
    assert "test vector" in record["reason"]
    phases = {d["device_id"]: d["phase"] for d in record["devices"]}
    assert phases == {ids[0]: "pending", ids[1]: "rolled_back", ids[2]: "pending"}
    assert _installed(broker_url, ids, "tiny@1:raspberry-pi-4") == dict.fromkeys(ids, "tiny@1:raspberry-pi-4")

    status = CliRunner().invoke(main, ["rollout", "status", record["rollout"], "--db", str(db)])
    assert status.exit_code == 0 and "aborted" in status.stdout and "rolled_back" in status.stdout


def test_a_killed_rollout_resumes_where_it_stopped(fleet, broker_url: str, signing_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    group, ids, db = fleet
    v3 = _package(tmp_path, signing_key[0], "3")
    argv = [str(Path(sys.executable).parent / "edgefleet"), "rollout", "start", str(v3), "--group", group,
            "--canary", "1", "--waves", "100", "--wait-between", "4s", "--broker", broker_url, "--db", str(db)]
    log = tmp_path / "rollout.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        with TelemetryStore(db) as store:
            deadline = time.monotonic() + 60
            while True:
                rollouts = [r for r in store.rollouts() if "tiny@3" in r.plan_json]
                found = store.rollout(rollouts[0].rollout_id) if rollouts else None
                if found and found[1][0].status == "passed":
                    break
                assert time.monotonic() < deadline, log.read_text()
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
    finally:
        proc.kill()  # mid-wait: the canary passed, the next wave has not started
        proc.wait()
    rollout_id = rollouts[0].rollout_id
    head, waves, _ = found
    assert head.status == "running" and [w.status for w in waves] == ["passed", "pending"]

    status = CliRunner().invoke(main, ["rollout", "status", "--db", str(db), "--json"])
    assert next(r for r in json.loads(status.stdout) if r["rollout"] == rollout_id)["status"] == "running"
    result = CliRunner().invoke(main, ["rollout", "resume", rollout_id, "--broker", broker_url, "--db", str(db),
                                       "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "completed"
    assert all(d["phase"] == "done" for d in record["devices"])
    assert _installed(broker_url, ids, "tiny@3:raspberry-pi-4") == dict.fromkeys(ids, "tiny@3:raspberry-pi-4")


def test_abort_from_another_process_rolls_the_running_rollout_back(fleet, broker_url: str, signing_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    group, ids, db = fleet
    v4 = _package(tmp_path, signing_key[0], "4")
    argv = [str(Path(sys.executable).parent / "edgefleet"), "rollout", "start", str(v4), "--group", group,
            "--canary", "1", "--waves", "100", "--wait-between", "60s", "--broker", broker_url, "--db", str(db),
            "--json"]
    # Rolling the canary back from 4 to 3 is a downgrade: the runner signs it with this key (anti-rollback).
    env = {**os.environ, "EDGEFLEET_SIGNING_KEY": str(signing_key[0])}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        with TelemetryStore(db) as store:
            deadline = time.monotonic() + 60
            while True:
                rollouts = [r for r in store.rollouts() if "tiny@4" in r.plan_json]
                found = store.rollout(rollouts[0].rollout_id) if rollouts else None
                if found and found[1][0].status == "passed":
                    break
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate(timeout=5)
                time.sleep(0.1)
        rollout_id = rollouts[0].rollout_id
        result = CliRunner().invoke(main, ["rollout", "abort", rollout_id, "--broker", broker_url, "--db", str(db)])
        assert result.exit_code == 0 and "asked the process running rollout" in result.stdout, result.output
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    record = json.loads(out)
    assert record["status"] == "aborted" and record["reason"] == "aborted on request"
    phases = sorted(d["phase"] for d in record["devices"])
    assert phases == ["pending", "pending", "rolled_back"]
    assert _installed(broker_url, ids, "tiny@3:raspberry-pi-4") == dict.fromkeys(ids, "tiny@3:raspberry-pi-4")
