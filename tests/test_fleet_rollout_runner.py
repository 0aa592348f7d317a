"""The rollout runner against a real SQLite store and a fake fleet that answers pushes through the store."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from conftest import make_package
from test_deploy_support import benchmark, state

from edgefleet.agent.messages import DeploymentEvent, Phase
from edgefleet.agent.package import read_manifest
from edgefleet.deploy.rollout import (
    DevicePhase,
    Gates,
    RolloutStatus,
    Strategy,
    WaveStatus,
)
from edgefleet.deploy.rollout_runner import (
    RolloutError,
    RolloutRunner,
    Target,
    load_state,
    plan_rollout,
    request,
)
from edgefleet.deploy.store import TelemetryStore

OLD = "tiny@1.0:raspberry-pi-4"
NEW = "tiny@2:raspberry-pi-4"


class Crash(Exception):
    """Stands in for the rollout process dying mid-run."""


class FakeFleet:
    """A Pusher whose devices answer at once, by writing their events and benchmarks into the store."""

    def __init__(self, store: TelemetryStore) -> None:
        self.store = store
        self.pushes: list[tuple[str, str, str]] = []  # (device, package id, deployment id)
        self.fail: set[tuple[str, str]] = set()        # (device, package id) that fail
        self.p50: dict[str, float] = {}                # package id -> benchmark p50
        self.crash_on: tuple[str, str] | None = None
        self.on_push = lambda device, package_id: None
        self.cleared: list[str] = []

    def push(self, path: Path, device_id: str, deployment_id: str, *, rollback: bool = False) -> None:
        package_id = read_manifest(path).package_id
        if self.crash_on == (device_id, package_id):
            self.crash_on = None
            raise Crash(device_id)
        self.pushes.append((device_id, package_id, deployment_id))
        self.on_push(device_id, package_id)
        failed = (device_id, package_id) in self.fail

        def answer(phase: Phase, error: str = "") -> None:
            self.store.record_event(DeploymentEvent(device_id=device_id, deployment_id=deployment_id,
                                                    package_id=package_id, phase=phase, error=error))

        answer(Phase.DOWNLOADING)
        if failed:
            answer(Phase.FAILED, "test vector 0, output 0: max error 1 exceeds rtol=0.0001 atol=1e-05")
            return
        version = package_id.split("@")[1].split(":")[0]
        self.store.record_benchmark(benchmark(device_id, version=version, p50=self.p50.get(package_id, 1.0)))
        answer(Phase.DONE)

    def clear(self, device_id: str) -> None:
        self.cleared.append(device_id)


@pytest.fixture
def store(tmp_path: Path) -> TelemetryStore:
    s = TelemetryStore(tmp_path / "fleet.db")
    for i in range(4):
        s.record_state(state(f"d{i}", groups=["kitchen"]))
    s.record_state(state("zero", profile="raspberry-pi-zero-2-w", groups=["kitchen"]))
    s.record_state(state("away", groups=["kitchen"], status="offline"))
    return s


@pytest.fixture
def packages(tmp_path: Path, signing_key: tuple[Path, Path]) -> tuple[Path, Path]:
    """(the new package, the package the devices run now)."""
    return (make_package(tmp_path / "tiny-2.efpkg", signing_key[0], version="2"),
            make_package(tmp_path / "tiny-1.efpkg", signing_key[0], version="1.0"))


def runner(store: TelemetryStore, rollout_id: str, fleet: FakeFleet, **kw: object) -> RolloutRunner:
    return RolloutRunner(store, rollout_id, fleet, poll=0, sleep=lambda s: None, **kw)  # type: ignore[arg-type]


def test_a_rollout_to_a_group_runs_canary_then_waves_to_completion(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    state_, skipped = plan_rollout(store, [packages[0]], Target(group="kitchen"),
                                   strategy=Strategy(canary=1, waves=(50, 100)))
    assert skipped == {"away": "offline", "zero": "no package for its profile 'raspberry-pi-zero-2-w'"}
    assert [(w.label, [d.device_id for d in state_.wave_devices(w.index)]) for w in state_.waves] == [
        ("canary", ["d0"]), ("50%", ["d1"]), ("100%", ["d2", "d3"])]
    fleet = FakeFleet(store)
    notes: list[str] = []
    final = runner(store, state_.rollout_id, fleet, on_note=notes.append).run()
    assert final.status is RolloutStatus.COMPLETED
    assert [p[0] for p in fleet.pushes] == ["d0", "d1", "d2", "d3"]
    assert all(p[1] == NEW for p in fleet.pushes)
    assert "wave canary passed" in notes and notes[-1] == "rollout completed"
    reloaded = load_state(store, state_.rollout_id)
    assert reloaded == final, "the store holds exactly the final state"
    assert all(d.phase is DevicePhase.DONE and d.p90_ms == pytest.approx(1.4) for d in reloaded.devices.values())
    assert store.rollouts()[0].owner is None, "the runner released the rollout"


def test_a_failing_canary_rolls_back_to_the_previous_package_file(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    new, old = packages
    state_, _ = plan_rollout(store, [new], Target(devices=("d0", "d1")), previous=[old],
                             strategy=Strategy(canary=("d1",), waves=(100,)))
    assert state_.devices["d1"].previous_path == str(old.resolve())
    fleet = FakeFleet(store)
    fleet.fail.add(("d1", NEW))
    final = runner(store, state_.rollout_id, fleet).run()
    assert final.status is RolloutStatus.ABORTED
    assert "canary" in final.reason and "max error 1 exceeds" in final.reason
    assert [p[:2] for p in fleet.pushes] == [("d1", NEW), ("d1", OLD)]
    assert final.devices["d1"].phase is DevicePhase.ROLLED_BACK
    assert final.devices["d0"].phase is DevicePhase.PENDING, "the second wave never started"


def test_without_the_previous_file_a_device_is_cleared_not_rolled_back(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    state_, _ = plan_rollout(store, [packages[0]], Target(devices=("d0",)))
    fleet = FakeFleet(store)
    fleet.fail.add(("d0", NEW))
    final = runner(store, state_.rollout_id, fleet).run()
    assert final.status is RolloutStatus.ABORTED and fleet.cleared == ["d0"]
    assert final.devices["d0"].phase is DevicePhase.NOT_ROLLED_BACK and OLD in final.devices["d0"].error


def test_a_p90_regression_against_the_same_device_aborts(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    new, old = packages
    for i in range(4):
        store.record_benchmark(benchmark(f"d{i}", version="1.0", p50=1.0))
    state_, _ = plan_rollout(store, [new], Target(profile="raspberry-pi-4"), previous=[old],
                             strategy=Strategy(canary=2, waves=(100,)), gates=Gates(max_p90_regression=20))
    assert state_.devices["d0"].baseline_p90_ms == pytest.approx(1.4)
    fleet = FakeFleet(store)
    fleet.p50[NEW] = 1.5
    final = runner(store, state_.rollout_id, fleet).run()
    assert final.status is RolloutStatus.ABORTED
    assert "p90 latency 2.1 ms against 1.4 ms" in final.reason and "+50% > 20%" in final.reason
    assert sorted(p[:2] for p in fleet.pushes if p[1] == OLD) == [("d0", OLD), ("d1", OLD)]


def test_a_crashed_run_resumes_where_it_was(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    state_, _ = plan_rollout(store, [packages[0]], Target(group="kitchen"), strategy=Strategy(canary=1, waves=(100,)))
    fleet = FakeFleet(store)
    fleet.crash_on = ("d2", NEW)
    dead = f"{socket.gethostname()}:999999999"  # no such process: its claim is stale at once
    with pytest.raises(Crash):
        runner(store, state_.rollout_id, fleet, owner=dead).run()
    store.claim_rollout(state_.rollout_id, dead, time.time(), free=None)  # a killed process releases nothing
    saved = load_state(store, state_.rollout_id)
    assert saved.waves[0].status is WaveStatus.PASSED and saved.waves[1].status is WaveStatus.DEPLOYING
    assert {d: saved.devices[d].phase for d in ("d1", "d2", "d3")} == dict.fromkeys(("d1", "d2", "d3"), DevicePhase.DEPLOYING)

    final = runner(store, state_.rollout_id, fleet).run()
    assert final.status is RolloutStatus.COMPLETED
    # d1 answered before the crash; d2 and d3 were never pushed (or their answer was lost): a new attempt each.
    assert [p for p in fleet.pushes if p[0] != "d0"] == [
        ("d1", NEW, f"{state_.rollout_id}.d1.1"), ("d2", NEW, f"{state_.rollout_id}.d2.2"),
        ("d3", NEW, f"{state_.rollout_id}.d3.2")]


def test_a_live_owner_keeps_its_rollout(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    import os

    state_, _ = plan_rollout(store, [packages[0]], Target(devices=("d0",)))
    store.claim_rollout(state_.rollout_id, f"{socket.gethostname()}:{os.getppid()}", time.time(), free=None)
    with pytest.raises(RolloutError, match="is being run by process"):
        runner(store, state_.rollout_id, FakeFleet(store)).run()


def test_pause_from_another_process_then_resume(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    state_, _ = plan_rollout(store, [packages[0]], Target(group="kitchen"), strategy=Strategy(canary=1, waves=(100,)))
    fleet = FakeFleet(store)
    fleet.on_push = lambda device, package_id: store.set_rollout_request(state_.rollout_id, "pause")
    paused = runner(store, state_.rollout_id, fleet).run()
    assert paused.status is RolloutStatus.PAUSED and [p[0] for p in fleet.pushes] == ["d0"]
    assert store.rollouts()[0].request is None
    with pytest.raises(RolloutError, match="only a running rollout can be paused"):
        request(store, state_.rollout_id, "pause")

    fleet.on_push = lambda device, package_id: None
    final = runner(store, state_.rollout_id, fleet).run()
    assert final.status is RolloutStatus.COMPLETED and [p[0] for p in fleet.pushes] == ["d0", "d1", "d2", "d3"]
    with pytest.raises(RolloutError, match="already completed"):
        request(store, state_.rollout_id, "abort")


def test_abort_of_an_idle_rollout_rolls_back_when_run(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    new, old = packages
    state_, _ = plan_rollout(store, [new], Target(group="kitchen"), previous=[old],
                             strategy=Strategy(canary=1, waves=(100,), wait_between=3600))
    fleet = FakeFleet(store)
    fleet.on_push = lambda device, package_id: store.set_rollout_request(state_.rollout_id, "pause")
    runner(store, state_.rollout_id, fleet).run()  # canary done, then paused
    paused = request(store, state_.rollout_id, "abort")[0]
    assert paused.status is RolloutStatus.PAUSED, "no process runs it: the abort waits for one"
    fleet.on_push = lambda device, package_id: None
    final = runner(store, state_.rollout_id, fleet).run()
    assert final.status is RolloutStatus.ABORTED and final.reason == "aborted on request"
    assert fleet.pushes[-1][:2] == ("d0", OLD)
    assert all(d.phase is DevicePhase.PENDING for k, d in final.devices.items() if k != "d0")


def test_planning_errors_say_what_to_do(store: TelemetryStore, packages: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(RolloutError, match="unknown device"):
        plan_rollout(store, [packages[0]], Target(devices=("ghost",)))
    with pytest.raises(RolloutError, match="no online device of group nobody"):
        plan_rollout(store, [packages[0]], Target(group="nobody"))
    with pytest.raises(RolloutError, match="one package per profile"):
        plan_rollout(store, list(packages), Target(group="kitchen"))
    junk = tmp_path / "junk.efpkg"
    junk.write_bytes(b"not a zip")
    with pytest.raises(RolloutError, match="not a readable package"):
        plan_rollout(store, [junk], Target(group="kitchen"))
    with pytest.raises(RolloutError, match="no rollout 'nope'"):
        load_state(store, "nope")


def test_status_pause_and_usage_errors_of_the_command(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    import json

    from click.testing import CliRunner

    from edgefleet.deploy.rollout_cli import rollout

    db = str(store.path)
    state_, _ = plan_rollout(store, [packages[0]], Target(group="kitchen"), strategy=Strategy(canary=1, waves=(50, 100)))
    rid = state_.rollout_id
    cli = CliRunner()
    result = cli.invoke(rollout, ["status", "--db", db])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATUS", "TARGET", "PACKAGES"]
    assert lines[2].startswith(f"{rid}  running  group kitchen  {NEW}") and "0/4" in lines[2]

    result = cli.invoke(rollout, ["pause", rid, "--db", db])
    assert result.exit_code == 0 and f"rollout {rid} paused" in result.stdout
    result = cli.invoke(rollout, ["status", rid, "--db", db])
    assert result.exit_code == 0
    assert result.stdout.startswith(f"rollout {rid}: paused — paused on request")
    assert "canary  pending  d0" in result.stdout
    record = json.loads(cli.invoke(rollout, ["status", rid, "--db", db, "--json"]).stdout)
    assert record["status"] == "paused" and [d["device_id"] for d in record["devices"]] == ["d0", "d1", "d2", "d3"]

    assert "no rollout 'nope'" in cli.invoke(rollout, ["status", "nope", "--db", db]).output
    pkg = str(packages[0])
    for argv, message in [
        ([pkg], "name the target"),
        ([pkg, "--group", "g", "--device", "d0"], "not both"),
        ([pkg, "--group", "g", "--waves", "10,50"], "100%"),
        ([pkg, "--group", "g", "--wait-between", "soon"], "not a duration"),
        ([pkg, "--group", "g", "--max-p90-regression", "lots"], "not a percentage"),
    ]:
        result = cli.invoke(rollout, ["start", *argv, "--db", db])
        assert result.exit_code == 2 and message in result.output, (argv, result.output)


def test_abort_from_another_process_while_running_rolls_back(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    new, old = packages
    state_, _ = plan_rollout(store, [new], Target(group="kitchen"), previous=[old],
                             strategy=Strategy(canary=2, waves=(100,)))
    fleet = FakeFleet(store)
    fleet.on_push = lambda device, package_id: store.set_rollout_request(state_.rollout_id, "abort")
    final = runner(store, state_.rollout_id, fleet).run()
    assert final.status is RolloutStatus.ABORTED and final.reason == "aborted on request"
    assert [p[:2] for p in fleet.pushes] == [("d0", NEW), ("d1", NEW), ("d0", OLD), ("d1", OLD)]
    assert {d: final.devices[d].phase for d in ("d0", "d1", "d2")} == {
        "d0": DevicePhase.ROLLED_BACK, "d1": DevicePhase.ROLLED_BACK, "d2": DevicePhase.PENDING}
    assert final.waves[0].status is WaveStatus.FAILED and final.waves[0].reason == "aborted on request"


def test_resume_of_a_finished_or_unknown_rollout_is_an_error(store: TelemetryStore, packages: tuple[Path, Path]) -> None:
    from click.testing import CliRunner

    from edgefleet.deploy.rollout_cli import rollout

    state_, _ = plan_rollout(store, [packages[0]], Target(devices=("d0",)))
    runner(store, state_.rollout_id, FakeFleet(store)).run()
    cli = CliRunner()
    result = cli.invoke(rollout, ["resume", state_.rollout_id, "--db", str(store.path)])
    assert result.exit_code == 1 and "already completed; nothing to resume" in result.output
    result = cli.invoke(rollout, ["resume", "nope", "--db", str(store.path)])
    assert result.exit_code == 1 and "no rollout 'nope'" in result.output
    result = cli.invoke(rollout, ["abort", state_.rollout_id, "--db", str(store.path)])
    assert result.exit_code == 1 and "already completed" in result.output
