"""Staged rollouts: the plan, the waves, the gates, and a pure state machine that drives them.

A rollout installs one package per hardware profile on a target set of devices, a wave at a
time: first the canary devices, then cumulative percentages of the target (``10,50,100``),
waiting ``wait_between`` seconds after each wave passes. A wave passes its gates when all of its
devices have finished and

* the share of its devices that failed is at most ``max_failure_rate``, and
* no device's p90 latency or energy per inference (from its ``BenchmarkReport``) regressed by
  more than ``max_p90_regression`` / ``max_energy_regression`` percent against the benchmark of
  the package it ran before, on that same device (devices without a baseline are not gated).

A wave that fails a gate aborts the rollout, and an abort rolls back every device the rollout
deployed to: each is sent, again, the package it had before (its file from the package
registry). A device that had no model before, or whose previous package file is unknown, cannot
be rolled back: it is marked ``not_rolled_back`` and its retained deployment is cleared, so it
keeps what it runs and a reinstalled device does not pick the aborted package up again. (An
agent that failed to install a package keeps serving its previous model anyway.)

``step(state, observations)`` is the whole decision logic: it takes the current
``RolloutState`` and what the fleet reported, and returns the next state plus the ``Push`` and
``Clear`` actions to perform. It does no I/O and reads no clock, so it is tested without MQTT;
``edgefleet.deploy.rollout_runner`` persists the state, performs the actions and gathers the
observations from the telemetry store.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from edgefleet.agent.messages import Phase


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ROLLING_BACK = "rolling_back"
    COMPLETED = "completed"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in (RolloutStatus.COMPLETED, RolloutStatus.ABORTED)


class WaveStatus(StrEnum):
    PENDING = "pending"
    DEPLOYING = "deploying"
    PASSED = "passed"
    FAILED = "failed"


class DevicePhase(StrEnum):
    PENDING = "pending"                  # its wave has not started
    DEPLOYING = "deploying"              # the new package is pushed; waiting for done or failed
    DONE = "done"                        # installed and (when reported in time) benchmarked
    FAILED = "failed"                    # the device refused or failed the package, or did not answer
    ROLLING_BACK = "rolling_back"        # its previous package is pushed again
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    NOT_ROLLED_BACK = "not_rolled_back"  # nothing to roll back to: no previous model, or its file is unknown


_IN_FLIGHT = (DevicePhase.DEPLOYING, DevicePhase.ROLLING_BACK)
_TOUCHED = (DevicePhase.DEPLOYING, DevicePhase.DONE, DevicePhase.FAILED)


# --- the plan ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PackageInfo:
    """One package of a rollout: the file for one profile."""

    package_id: str
    profile: str
    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Strategy:
    """Canary devices first (a count, or explicit ids), then cumulative percentages of the target."""

    canary: int | tuple[str, ...] = 0
    waves: tuple[float, ...] = (100.0,)
    wait_between: float = 0.0       # seconds after a wave passes before the next starts
    device_timeout: float = 300.0   # a device that says nothing for this long after a push has failed
    metrics_wait: float = 15.0      # how long to wait for a benchmark after a device reports done

    def __post_init__(self) -> None:
        if isinstance(self.canary, int) and self.canary < 0:
            raise ValueError("the canary count cannot be negative")
        if not self.waves or any(not 0 < p <= 100 for p in self.waves):
            raise ValueError("wave percentages must be in (0, 100]")
        if list(self.waves) != sorted(set(self.waves)):
            raise ValueError(f"wave percentages must increase: {','.join(f'{p:g}' for p in self.waves)}")
        if self.waves[-1] != 100:
            raise ValueError("the last wave must reach 100% of the target")
        if self.wait_between < 0 or self.device_timeout <= 0 or self.metrics_wait < 0:
            raise ValueError("waits must not be negative, and the device timeout must be positive")


@dataclass(frozen=True, slots=True)
class Gates:
    """When a wave aborts the rollout. Regressions are in percent; None turns a gate off."""

    max_failure_rate: float = 0.0
    max_p90_regression: float | None = None
    max_energy_regression: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.max_failure_rate <= 1:
            raise ValueError(f"the failure rate is a fraction in [0, 1], not {self.max_failure_rate}")
        for value in (self.max_p90_regression, self.max_energy_regression):
            if value is not None and value < 0:
                raise ValueError("a regression threshold cannot be negative")

    @property
    def need_metrics(self) -> bool:
        return self.max_p90_regression is not None or self.max_energy_regression is not None


@dataclass(frozen=True, slots=True)
class Plan:
    packages: tuple[PackageInfo, ...]
    target: str                       # how the devices were chosen, for people: "group kitchen"
    strategy: Strategy = Strategy()
    gates: Gates = Gates()

    def package_for(self, profile: str) -> PackageInfo | None:
        return next((p for p in self.packages if p.profile == profile), None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        raw = json.loads(text)
        s = raw["strategy"]
        canary = s["canary"] if isinstance(s["canary"], int) else tuple(s["canary"])
        return cls(
            packages=tuple(PackageInfo(**p) for p in raw["packages"]),
            target=raw["target"],
            strategy=Strategy(canary=canary, waves=tuple(s["waves"]), wait_between=s["wait_between"],
                              device_timeout=s["device_timeout"], metrics_wait=s["metrics_wait"]),
            gates=Gates(**raw["gates"]),
        )


def assign_waves(device_ids: Sequence[str], strategy: Strategy) -> list[tuple[str, list[str]]]:
    """Split the target into (label, devices) waves: canaries first, then the percentages.

    Percentages are cumulative over the whole target (canaries included) and round up, so every
    wave gets at least one device; a percentage that adds no device is dropped.
    """
    ids = list(dict.fromkeys(device_ids))
    if isinstance(strategy.canary, int):
        canaries = ids[: strategy.canary]
    else:
        unknown = [c for c in strategy.canary if c not in ids]
        if unknown:
            raise ValueError(f"canary device(s) not in the target: {', '.join(unknown)}")
        canaries = list(dict.fromkeys(strategy.canary))
    rest = [d for d in ids if d not in canaries]
    waves: list[tuple[str, list[str]]] = [("canary", canaries)] if canaries else []
    assigned = len(canaries)
    for percent in strategy.waves:
        upto = min(len(ids), math.ceil(percent / 100 * len(ids) - 1e-9))
        if upto > assigned:
            waves.append((f"{percent:g}%", rest[assigned - len(canaries): upto - len(canaries)]))
            assigned = upto
    return waves


# --- the state ---------------------------------------------------------------------------


@dataclass(slots=True)
class DeviceProgress:
    device_id: str
    wave: int
    profile: str
    package_id: str
    previous_package_id: str | None = None
    previous_path: str | None = None
    baseline_p90_ms: float | None = None
    baseline_energy_mj: float | None = None
    phase: DevicePhase = DevicePhase.PENDING
    deployment_id: str | None = None
    attempt: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""
    p90_ms: float | None = None
    energy_mj: float | None = None


@dataclass(slots=True)
class WaveProgress:
    index: int
    label: str
    status: WaveStatus = WaveStatus.PENDING
    started_at: float | None = None
    finished_at: float | None = None
    reason: str = ""


@dataclass(slots=True)
class RolloutState:
    rollout_id: str
    plan: Plan
    waves: list[WaveProgress]
    devices: dict[str, DeviceProgress]
    status: RolloutStatus = RolloutStatus.RUNNING
    reason: str = ""
    next_wave_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def wave_devices(self, index: int) -> list[DeviceProgress]:
        return [d for d in self.devices.values() if d.wave == index]

    def current_wave(self) -> WaveProgress | None:
        return next((w for w in self.waves if w.status is WaveStatus.DEPLOYING), None)


def new_state(rollout_id: str, plan: Plan, devices: Sequence[DeviceProgress], now: float) -> RolloutState:
    """A rollout not started yet: waves assigned, every device pending, the first wave due now."""
    waves = assign_waves([d.device_id for d in devices], plan.strategy)
    if not waves:
        raise ValueError("a rollout needs at least one device")
    by_id = {d.device_id: d for d in devices}
    progress: dict[str, DeviceProgress] = {}
    for index, (_, members) in enumerate(waves):
        for device_id in members:
            progress[device_id] = _with_wave(by_id[device_id], index)
    return RolloutState(
        rollout_id=rollout_id, plan=plan, devices=progress, next_wave_at=now, created_at=now, updated_at=now,
        waves=[WaveProgress(index=i, label=label) for i, (label, _) in enumerate(waves)],
    )


def _with_wave(d: DeviceProgress, wave: int) -> DeviceProgress:
    new = copy.copy(d)
    new.wave = wave
    return new


# --- observations and actions ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """What one device said about one deployment: its last phase, and the benchmark that followed."""

    phase: Phase | None = None
    error: str = ""
    p90_ms: float | None = None
    energy_mj: float | None = None


@dataclass(frozen=True, slots=True)
class Observations:
    now: float
    reports: Mapping[str, DeviceReport] = field(default_factory=dict)  # by deployment id
    request: str | None = None                                        # "pause" or "abort", from another process


@dataclass(frozen=True, slots=True)
class Push:
    """Push the package file at ``path`` to ``device_id`` as deployment ``deployment_id``."""

    device_id: str
    package_id: str
    path: str
    deployment_id: str
    rollback: bool = False


@dataclass(frozen=True, slots=True)
class Clear:
    """Remove the retained deployment of ``device_id``."""

    device_id: str


Action = Push | Clear


@dataclass(frozen=True, slots=True)
class Step:
    state: RolloutState
    actions: list[Action]
    notes: list[str]  # what happened, for people (the CLI prints them)


def deployment_id(rollout_id: str, device_id: str, attempt: int, *, rollback: bool = False) -> str:
    """Unique per push; a new attempt gets a new id, because agents ignore ids they have finished."""
    return f"{rollout_id}.{device_id}.{'rb' if rollback else ''}{attempt}"


# --- the state machine -------------------------------------------------------------------


def step(state: RolloutState, obs: Observations) -> Step:
    """Given the current state and what the fleet reported, the next state and what to do.

    ``state`` is not modified. Call it repeatedly (the runner polls); it is idempotent when
    nothing new was observed, apart from time passing.
    """
    s = copy.deepcopy(state)
    actions: list[Action] = []
    notes: list[str] = []
    now = obs.now
    if s.status.finished:
        return Step(s, actions, notes)

    if obs.request == "abort" and s.status in (RolloutStatus.RUNNING, RolloutStatus.PAUSED):
        notes.append("abort requested")
        _absorb(s, obs, notes)
        _start_rollback(s, now, "aborted on request", actions, notes)
        s.updated_at = now
        return Step(s, actions, notes)
    if obs.request == "pause" and s.status is RolloutStatus.RUNNING:
        s.status = RolloutStatus.PAUSED
        s.reason = "paused on request"
        notes.append("paused: no new wave starts until `edgefleet rollout resume`")

    _absorb(s, obs, notes)

    if s.status is RolloutStatus.ROLLING_BACK:
        if not any(d.phase is DevicePhase.ROLLING_BACK for d in s.devices.values()):
            s.status = RolloutStatus.ABORTED
            notes.append(f"rollout aborted: {s.reason}")
    elif s.status is RolloutStatus.RUNNING:
        _advance(s, now, actions, notes)
    if actions or notes:
        s.updated_at = now
    return Step(s, actions, notes)


def redeliver(state: RolloutState, now: float, *, only: Collection[str] | None = None) -> Step:
    """After a restart: push again to devices still in flight, as a new attempt.

    The process that pushed them may have died before hearing the answer (events are not
    retained). An agent that already installed the package only benchmarks it again, so pushing
    twice is safe.
    """
    s = copy.deepcopy(state)
    actions: list[Action] = []
    notes: list[str] = []
    for d in s.devices.values():
        if only is not None and d.device_id not in only:
            continue
        if d.phase is DevicePhase.DEPLOYING:
            package = s.plan.package_for(d.profile)
            assert package is not None
            actions.append(_push(s, d, package.package_id, package.path, now, rollback=False))
            notes.append(f"{d.device_id}: pushed {d.package_id} again (attempt {d.attempt})")
        elif d.phase is DevicePhase.ROLLING_BACK and d.previous_package_id and d.previous_path:
            actions.append(_push(s, d, d.previous_package_id, d.previous_path, now, rollback=True))
            notes.append(f"{d.device_id}: pushed {d.previous_package_id} again to roll back (attempt {d.attempt})")
    return Step(s, actions, notes)


def resume(state: RolloutState, now: float) -> RolloutState:
    """A paused rollout, running again (a finished one is returned unchanged)."""
    s = copy.deepcopy(state)
    if s.status is RolloutStatus.PAUSED:
        s.status = RolloutStatus.RUNNING
        s.reason = ""
        s.updated_at = now
    return s


def pause(state: RolloutState, now: float) -> RolloutState:
    s = copy.deepcopy(state)
    if s.status is RolloutStatus.RUNNING:
        s.status = RolloutStatus.PAUSED
        s.reason = "paused on request"
        s.updated_at = now
    return s


def evaluate_gates(gates: Gates, devices: Sequence[DeviceProgress]) -> str | None:
    """Why a finished wave fails its gates, or None if it passes."""
    if not devices:
        return None
    failed = [d for d in devices if d.phase is DevicePhase.FAILED]
    rate = len(failed) / len(devices)
    if rate > gates.max_failure_rate:
        first = failed[0]
        return (f"{len(failed)} of {len(devices)} device(s) failed ({rate:.0%} > {gates.max_failure_rate:.0%}); "
                f"{first.device_id}: {first.error or 'no reason given'}")
    for d in devices:
        if d.phase is not DevicePhase.DONE:
            continue
        for what, unit, limit, before, after in (
            ("p90 latency", "ms", gates.max_p90_regression, d.baseline_p90_ms, d.p90_ms),
            ("energy per inference", "mJ", gates.max_energy_regression, d.baseline_energy_mj, d.energy_mj),
        ):
            if limit is None or before is None or after is None or before <= 0:
                continue
            change = (after - before) / before * 100
            if change > limit:
                return (f"{d.device_id}: {what} {after:.3g} {unit} against {before:.3g} {unit} with "
                        f"{d.previous_package_id} (+{change:.0f}% > {limit:g}%)")
    return None


def _absorb(s: RolloutState, obs: Observations, notes: list[str]) -> None:
    """Fold the devices' reports (and silence past the timeout) into their phases."""
    timeout = s.plan.strategy.device_timeout
    for d in s.devices.values():
        report = obs.reports.get(d.deployment_id or "") if d.deployment_id else None
        if d.phase in _IN_FLIGHT:
            rollback = d.phase is DevicePhase.ROLLING_BACK
            if report is not None and report.phase is Phase.DONE:
                d.phase = DevicePhase.ROLLED_BACK if rollback else DevicePhase.DONE
                d.finished_at = obs.now
                notes.append(f"{d.device_id}: {'rolled back to ' + str(d.previous_package_id) if rollback else 'installed ' + d.package_id}")
            elif report is not None and report.phase is Phase.FAILED:
                d.phase = DevicePhase.ROLLBACK_FAILED if rollback else DevicePhase.FAILED
                d.finished_at = obs.now
                d.error = report.error or "no reason given"
                notes.append(f"{d.device_id}: {'rollback ' if rollback else ''}failed: {d.error}")
            elif d.started_at is not None and obs.now - d.started_at > timeout:
                d.phase = DevicePhase.ROLLBACK_FAILED if rollback else DevicePhase.FAILED
                d.finished_at = obs.now
                d.error = f"no answer within {timeout:g}s (offline, or no agent running?)"
                notes.append(f"{d.device_id}: {d.error}")
        if d.phase is DevicePhase.DONE and report is not None and d.p90_ms is None and report.p90_ms is not None:
            d.p90_ms, d.energy_mj = report.p90_ms, report.energy_mj


def _advance(s: RolloutState, now: float, actions: list[Action], notes: list[str]) -> None:
    wave = s.current_wave()
    if wave is not None:
        members = s.wave_devices(wave.index)
        if not all(d.phase in (DevicePhase.DONE, DevicePhase.FAILED) for d in members):
            return
        if not _metrics_ready(s, members, now):
            return
        verdict = evaluate_gates(s.plan.gates, members)
        wave.finished_at = now
        if verdict is not None:
            wave.status = WaveStatus.FAILED
            wave.reason = verdict
            notes.append(f"wave {wave.label} failed its gates: {verdict}")
            _start_rollback(s, now, f"wave {wave.label}: {verdict}", actions, notes)
            return
        wave.status = WaveStatus.PASSED
        notes.append(f"wave {wave.label} passed")
        if any(w.status is WaveStatus.PENDING for w in s.waves):
            s.next_wave_at = now + s.plan.strategy.wait_between
            if s.plan.strategy.wait_between:
                notes.append(f"next wave in {s.plan.strategy.wait_between:g}s")
        return
    pending = next((w for w in s.waves if w.status is WaveStatus.PENDING), None)
    if pending is None:
        s.status = RolloutStatus.COMPLETED
        s.next_wave_at = None
        notes.append("rollout completed")
        return
    if s.next_wave_at is not None and now < s.next_wave_at:
        return
    pending.status = WaveStatus.DEPLOYING
    pending.started_at = now
    s.next_wave_at = None
    members = s.wave_devices(pending.index)
    notes.append(f"wave {pending.label}: deploying to {', '.join(d.device_id for d in members)}")
    for d in members:
        package = s.plan.package_for(d.profile)
        assert package is not None, f"the plan has no package for {d.profile}"
        actions.append(_push(s, d, package.package_id, package.path, now, rollback=False))


def _metrics_ready(s: RolloutState, members: Sequence[DeviceProgress], now: float) -> bool:
    """Done devices whose benchmark a metric gate needs have reported it, or we waited long enough."""
    gates = s.plan.gates
    if not gates.need_metrics:
        return True
    for d in members:
        if d.phase is not DevicePhase.DONE or d.p90_ms is not None:
            continue
        if d.baseline_p90_ms is None and d.baseline_energy_mj is None:
            continue  # nothing to compare with: not gated
        if d.finished_at is not None and now - d.finished_at < s.plan.strategy.metrics_wait:
            return False
    return True


def _push(s: RolloutState, d: DeviceProgress, package_id: str, path: str, now: float, *, rollback: bool) -> Push:
    d.attempt += 1
    d.deployment_id = deployment_id(s.rollout_id, d.device_id, d.attempt, rollback=rollback)
    d.phase = DevicePhase.ROLLING_BACK if rollback else DevicePhase.DEPLOYING
    d.started_at = now
    d.finished_at = None
    if not rollback:
        d.error = ""
    return Push(d.device_id, package_id, path, d.deployment_id, rollback=rollback)


def _start_rollback(s: RolloutState, now: float, reason: str, actions: list[Action], notes: list[str]) -> None:
    s.status = RolloutStatus.ROLLING_BACK
    s.reason = reason
    s.next_wave_at = None
    for w in s.waves:
        if w.status is WaveStatus.DEPLOYING:
            w.status = WaveStatus.FAILED
            w.finished_at = now
            w.reason = w.reason or reason
    for d in s.devices.values():
        if d.phase not in _TOUCHED:
            continue
        if d.previous_package_id is None:
            d.phase = DevicePhase.NOT_ROLLED_BACK
            d.error = f"it had no model before the rollout; it keeps {d.package_id} if installed"
        elif d.previous_package_id == d.package_id:
            d.phase = DevicePhase.ROLLED_BACK  # it ran this package before the rollout: nothing to undo
            continue
        elif d.previous_path is None:
            d.phase = DevicePhase.NOT_ROLLED_BACK
            d.error = (f"the file of its previous package {d.previous_package_id} is unknown; "
                       f"push it by hand with `edgefleet push FILE --device {d.device_id}`")
        else:
            actions.append(_push(s, d, d.previous_package_id, d.previous_path, now, rollback=True))
            notes.append(f"{d.device_id}: rolling back to {d.previous_package_id}")
            continue
        actions.append(Clear(d.device_id))
        notes.append(f"{d.device_id}: not rolled back: {d.error}")
    if not any(d.phase is DevicePhase.ROLLING_BACK for d in s.devices.values()):
        s.status = RolloutStatus.ABORTED
        notes.append(f"rollout aborted: {reason}")


def state_record(s: RolloutState) -> dict[str, Any]:
    """The rollout as plain JSON-ready data (``edgefleet rollout status --json``)."""
    return {
        "rollout": s.rollout_id,
        "status": s.status.value,
        "reason": s.reason,
        "target": s.plan.target,
        "packages": [asdict(p) for p in s.plan.packages],
        "strategy": asdict(s.plan.strategy),
        "gates": asdict(s.plan.gates),
        "next_wave_at": s.next_wave_at,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "waves": [
            {**asdict(w), "status": w.status.value, "devices": [d.device_id for d in s.wave_devices(w.index)]}
            for w in s.waves
        ],
        "devices": [{**asdict(d), "phase": d.phase.value} for d in s.devices.values()],
    }
