"""The rollout state machine, pure: states and observations in, states and actions out. No MQTT, no clock."""

from __future__ import annotations

import pytest

from edgefleet.agent.messages import Phase
from edgefleet.deploy.rollout import (
    Clear,
    DevicePhase,
    DeviceProgress,
    DeviceReport,
    Gates,
    Observations,
    PackageInfo,
    Plan,
    Push,
    RolloutState,
    RolloutStatus,
    Strategy,
    WaveStatus,
    assign_waves,
    evaluate_gates,
    new_state,
    redeliver,
    resume,
    state_record,
    step,
)

NEW = PackageInfo("tiny@2:raspberry-pi-4", "raspberry-pi-4", "/pkgs/tiny-2.efpkg", "a" * 64)
OLD = "tiny@1:raspberry-pi-4"


def make_state(n: int = 3, *, strategy: Strategy | None = None, gates: Gates | None = None,
               previous: str | None = OLD, previous_path: str | None = "/pkgs/tiny-1.efpkg",
               baseline: float | None = None) -> RolloutState:
    plan = Plan(packages=(NEW,), target="group g", strategy=strategy or Strategy(canary=1, waves=(100,)),
                gates=gates or Gates())
    devices = [DeviceProgress(device_id=f"d{i}", wave=0, profile="raspberry-pi-4", package_id=NEW.package_id,
                              previous_package_id=previous, previous_path=previous_path,
                              baseline_p90_ms=baseline, baseline_energy_mj=baseline)
               for i in range(n)]
    return new_state("r1", plan, devices, now=0.0)


def reports(state: RolloutState, phase: Phase, *, error: str = "", p90: float | None = None,
            only: set[str] | None = None) -> dict[str, DeviceReport]:
    """A report of ``phase`` for the current deployment of every in-flight device (or ``only`` those)."""
    return {
        d.deployment_id: DeviceReport(phase=phase, error=error, p90_ms=p90, energy_mj=p90)
        for d in state.devices.values()
        if d.deployment_id and d.phase in (DevicePhase.DEPLOYING, DevicePhase.ROLLING_BACK)
        and (only is None or d.device_id in only)
    }


def test_waves_are_canaries_then_cumulative_percentages_rounding_up() -> None:
    ids = [f"d{i}" for i in range(10)]
    waves = assign_waves(ids, Strategy(canary=1, waves=(10, 50, 100)))
    # 10% of 10 is one device, which the canary already is: that wave adds nobody and is dropped.
    assert waves == [("canary", ["d0"]), ("50%", ["d1", "d2", "d3", "d4"]), ("100%", ids[5:])]
    assert assign_waves(ids[:3], Strategy(canary=("d2",), waves=(50, 100))) == [
        ("canary", ["d2"]), ("50%", ["d0"]), ("100%", ["d1"])]
    assert assign_waves(ids[:1], Strategy(waves=(10, 100))) == [("10%", ["d0"])]
    with pytest.raises(ValueError, match="not in the target"):
        assign_waves(ids, Strategy(canary=("nope",)))


@pytest.mark.parametrize("waves, message", [((50,), "100%"), ((50, 10, 100), "increase"), ((0, 100), r"\(0, 100\]")])
def test_bad_strategies_say_what_is_wrong(waves: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Strategy(waves=waves)


def test_plan_survives_json() -> None:
    plan = Plan(packages=(NEW,), target="devices a, b",
                strategy=Strategy(canary=("a",), waves=(50, 100), wait_between=30, device_timeout=60, metrics_wait=5),
                gates=Gates(max_failure_rate=0.1, max_p90_regression=20))
    assert Plan.from_json(plan.to_json()) == plan


def test_canary_then_wave_with_a_wait_between_then_completed() -> None:
    s = make_state(3, strategy=Strategy(canary=1, waves=(100,), wait_between=30))
    r = step(s, Observations(now=1))
    assert [type(a) for a in r.actions] == [Push]
    (push,) = r.actions
    assert push == Push("d0", NEW.package_id, NEW.path, "r1.d0.1")
    assert r.state.waves[0].status is WaveStatus.DEPLOYING and r.state.devices["d0"].phase is DevicePhase.DEPLOYING
    assert s.devices["d0"].phase is DevicePhase.PENDING, "step does not modify its input"

    s = step(r.state, Observations(now=2, reports=reports(r.state, Phase.DOWNLOADING))).state
    assert s.devices["d0"].phase is DevicePhase.DEPLOYING
    r = step(s, Observations(now=3, reports=reports(s, Phase.DONE)))
    assert r.state.waves[0].status is WaveStatus.PASSED and r.state.next_wave_at == 33
    assert not r.actions
    assert not step(r.state, Observations(now=20)).actions, "the next wave waits"
    r = step(r.state, Observations(now=33))
    assert sorted(a.device_id for a in r.actions if isinstance(a, Push)) == ["d1", "d2"]
    r = step(r.state, Observations(now=40, reports=reports(r.state, Phase.DONE)))
    assert r.state.waves[1].status is WaveStatus.PASSED
    r = step(r.state, Observations(now=41))
    assert r.state.status is RolloutStatus.COMPLETED and "rollout completed" in r.notes
    assert step(r.state, Observations(now=42)).actions == []


def test_a_failed_canary_aborts_and_rolls_back_to_the_previous_package() -> None:
    s = step(make_state(3), Observations(now=1)).state
    r = step(s, Observations(now=2, reports=reports(s, Phase.FAILED, error="test vector 0 fails")))
    assert r.state.status is RolloutStatus.ROLLING_BACK
    assert r.state.waves[0].status is WaveStatus.FAILED and "1 of 1 device(s) failed" in r.state.waves[0].reason
    assert r.actions == [Push("d0", OLD, "/pkgs/tiny-1.efpkg", "r1.d0.rb2", rollback=True)]
    assert r.state.devices["d1"].phase is DevicePhase.PENDING, "devices of later waves were never touched"
    r = step(r.state, Observations(now=3, reports=reports(r.state, Phase.DONE)))
    assert r.state.status is RolloutStatus.ABORTED
    assert r.state.devices["d0"].phase is DevicePhase.ROLLED_BACK


def test_the_failure_rate_gate_tolerates_what_it_allows() -> None:
    gates = Gates(max_failure_rate=0.5)
    s = step(make_state(4, strategy=Strategy(waves=(100,)), gates=gates), Observations(now=1)).state
    obs = {**reports(s, Phase.DONE, only={"d0", "d1"}), **reports(s, Phase.FAILED, error="x", only={"d2", "d3"})}
    r = step(s, Observations(now=2, reports=obs))
    assert r.state.waves[0].status is WaveStatus.PASSED, "2 of 4 is not more than 50%"
    assert evaluate_gates(Gates(max_failure_rate=0.49), list(r.state.devices.values())) is not None


def test_a_p90_regression_aborts_after_waiting_for_the_benchmark() -> None:
    strategy = Strategy(waves=(100,), metrics_wait=10)
    s = step(make_state(2, strategy=strategy, gates=Gates(max_p90_regression=20), baseline=10.0), Observations(now=1)).state
    s = step(s, Observations(now=2, reports=reports(s, Phase.DONE))).state
    assert s.waves[0].status is WaveStatus.DEPLOYING, "done, but the benchmark has not arrived yet"
    r = step(s, Observations(now=3, reports={d.deployment_id: DeviceReport(Phase.DONE, p90_ms=p90, energy_mj=1.0)
                                             for d, p90 in zip(s.devices.values(), (11.0, 13.0))}))
    assert r.state.status is RolloutStatus.ROLLING_BACK
    assert "d1: p90 latency 13 ms against 10 ms" in r.state.reason and "+30% > 20%" in r.state.reason
    assert {a.device_id for a in r.actions} == {"d0", "d1"}


def test_without_a_benchmark_the_metric_gate_gives_up_waiting() -> None:
    strategy = Strategy(waves=(100,), metrics_wait=10)
    s = step(make_state(1, strategy=strategy, gates=Gates(max_p90_regression=20), baseline=10.0), Observations(now=1)).state
    s = step(s, Observations(now=2, reports=reports(s, Phase.DONE))).state
    assert step(s, Observations(now=5)).state.waves[0].status is WaveStatus.DEPLOYING
    assert step(s, Observations(now=12)).state.waves[0].status is WaveStatus.PASSED


def test_devices_without_anything_to_roll_back_to_are_cleared_and_say_why() -> None:
    s = step(make_state(1, strategy=Strategy(waves=(100,)), previous=None), Observations(now=1)).state
    r = step(s, Observations(now=2, reports=reports(s, Phase.FAILED)))
    assert r.actions == [Clear("d0")]
    assert r.state.status is RolloutStatus.ABORTED
    assert r.state.devices["d0"].phase is DevicePhase.NOT_ROLLED_BACK
    assert "no model before" in r.state.devices["d0"].error

    s = step(make_state(1, strategy=Strategy(waves=(100,)), previous_path=None), Observations(now=1)).state
    r = step(s, Observations(now=2, reports=reports(s, Phase.FAILED)))
    assert r.actions == [Clear("d0")]
    assert "is unknown" in r.state.devices["d0"].error and "edgefleet push" in r.state.devices["d0"].error


def test_silence_past_the_device_timeout_is_a_failure() -> None:
    s = step(make_state(1, strategy=Strategy(waves=(100,), device_timeout=60)), Observations(now=1)).state
    assert step(s, Observations(now=60)).state.devices["d0"].phase is DevicePhase.DEPLOYING
    r = step(s, Observations(now=62))
    assert r.state.devices["d0"].error.startswith("no answer within 60s")
    assert r.state.status is RolloutStatus.ROLLING_BACK


def test_pause_stops_new_waves_and_resume_continues() -> None:
    s = step(make_state(3), Observations(now=1)).state
    r = step(s, Observations(now=2, reports=reports(s, Phase.DONE), request="pause"))
    assert r.state.status is RolloutStatus.PAUSED and r.state.devices["d0"].phase is DevicePhase.DONE
    assert not step(r.state, Observations(now=100)).actions
    r = step(resume(r.state, now=101), Observations(now=101))
    assert r.state.status is RolloutStatus.RUNNING
    r = step(r.state, Observations(now=102))
    assert {a.device_id for a in r.actions} == {"d1", "d2"}


def test_abort_rolls_back_every_device_deployed_so_far() -> None:
    s = step(make_state(3, strategy=Strategy(canary=1, waves=(100,), wait_between=50)), Observations(now=1)).state
    s = step(s, Observations(now=2, reports=reports(s, Phase.DONE))).state
    r = step(s, Observations(now=3, request="abort"))
    assert r.state.status is RolloutStatus.ROLLING_BACK and r.state.reason == "aborted on request"
    assert r.actions == [Push("d0", OLD, "/pkgs/tiny-1.efpkg", "r1.d0.rb2", rollback=True)]
    r = step(r.state, Observations(now=4, reports=reports(r.state, Phase.FAILED, error="disk full")))
    assert r.state.status is RolloutStatus.ABORTED
    assert r.state.devices["d0"].phase is DevicePhase.ROLLBACK_FAILED and r.state.devices["d0"].error == "disk full"


def test_redeliver_pushes_in_flight_devices_again_as_a_new_attempt() -> None:
    s = step(make_state(3, strategy=Strategy(waves=(100,))), Observations(now=1)).state
    r = redeliver(s, now=50, only={"d0", "d1"})
    assert [(a.device_id, a.deployment_id) for a in r.actions] == [("d0", "r1.d0.2"), ("d1", "r1.d1.2")]
    assert r.state.devices["d0"].started_at == 50


def test_state_record_is_plain_data() -> None:
    import json

    record = state_record(step(make_state(2), Observations(now=1)).state)
    assert json.loads(json.dumps(record))["waves"][0] == {
        "index": 0, "label": "canary", "status": "deploying", "started_at": 1, "finished_at": None, "reason": "",
        "devices": ["d0"]}
