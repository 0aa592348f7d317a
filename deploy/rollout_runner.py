"""Rollouts at the edges: planning from the registry, persistence, observations, and the run loop.

``edgefleet.deploy.rollout`` decides; this module does the I/O around it:

* ``plan_rollout`` reads the packages' manifests, resolves the target from the device registry,
  records per device the package it runs now (with that package's file, from the store's package
  registry, and its latest benchmark as the baseline for the metric gates), and saves the new
  rollout in the store.
* ``save_state`` / ``load_state`` map a ``RolloutState`` to the store's ``rollouts``,
  ``rollout_waves`` and ``rollout_devices`` tables, so a restarted process resumes.
* ``observe`` reads the devices' events and benchmarks from the store (filled by a ``Collector``
  the caller runs) for every deployment the rollout made.
* ``RolloutRunner`` loops: observe, ``step``, save, then perform the actions through a
  ``Pusher`` (``MqttPusher`` in production, a fake in unit tests). It saves before it pushes,
  so a push is never made without the store knowing its deployment id.

One process runs a rollout at a time: the runner claims it in the store (owner ``host:pid``
plus a heartbeat) and refuses one that a live process holds. ``pause`` and ``abort`` from
another process are requests written to the store, which the running process picks up.

Errors: ``RolloutError`` for anything the user can fix (unknown rollout, no devices, a package
that is not one, a rollout another process runs); ``PushError`` when the broker is unreachable.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgefleet.agent import keys, topics
from edgefleet.agent.errors import EdgefleetError, PackageError
from edgefleet.agent.labels import format_labels
from edgefleet.agent.messages import Deployment, PackageRef, Phase
from edgefleet.agent.package import Manifest, file_sha256, read_manifest
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy import rollout as engine
from edgefleet.deploy.link import BrokerLink
from edgefleet.deploy.push import chunk_messages, describe_package, sign_rollback
from edgefleet.deploy.registry import (
    DeviceFilter,
    RegistryError,
    find_devices,
    select_devices,
)
from edgefleet.deploy.rollout import (
    DevicePhase,
    DeviceProgress,
    DeviceReport,
    Gates,
    Observations,
    PackageInfo,
    Plan,
    RolloutState,
    RolloutStatus,
    Strategy,
    WaveProgress,
    WaveStatus,
)
from edgefleet.deploy.store import (
    PackageRecord,
    RolloutDeviceRow,
    RolloutRow,
    RolloutWaveRow,
    TelemetryStore,
)

log = logging.getLogger(__name__)

HEARTBEAT_STALE_AFTER = 15.0  # seconds without a heartbeat after which a rollout's owner is presumed dead


class RolloutError(EdgefleetError):
    """A rollout cannot be planned, found or run; the message says what to do."""


# --- planning ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Which devices: explicit ids, or a group, a profile and/or labels (all must match) from the registry."""

    devices: tuple[str, ...] = ()
    group: str | None = None
    profile: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def selects(self) -> bool:
        """Whether the target is a selection from the registry (rather than explicit devices)."""
        return bool(self.group or self.profile or self.labels)

    def describe(self) -> str:
        if self.devices:
            return "devices " + ", ".join(self.devices)
        parts = ([f"group {self.group}"] if self.group else []) + ([f"profile {self.profile}"] if self.profile else [])
        parts += [f"labels {format_labels(self.labels)}"] if self.labels else []
        return " and ".join(parts)


def register_package(store: TelemetryStore, path: Path, *, now: float | None = None) -> PackageInfo:
    """Read ``path``'s manifest and remember the file in the store's package registry."""
    path = Path(path).resolve()
    try:
        manifest = read_manifest(path)
    except (PackageError, OSError) as exc:
        raise RolloutError(f"{path}: not a readable package ({exc})") from None
    info = PackageInfo(package_id=manifest.package_id, profile=manifest.target.profile, path=str(path),
                       sha256=file_sha256(path))
    store.register_package(PackageRecord(info.package_id, info.profile, info.sha256, info.path,
                                         time.time() if now is None else now))
    return info


def plan_rollout(
    store: TelemetryStore,
    packages: Sequence[Path],
    target: Target,
    *,
    strategy: Strategy = Strategy(),
    gates: Gates = Gates(),
    previous: Sequence[Path] = (),
    rollout_id: str | None = None,
    now: float | None = None,
) -> tuple[RolloutState, dict[str, str]]:
    """Create and save a rollout; returns its state and the devices left out, with the reason.

    Offline devices and devices whose profile has no package are left out. ``previous`` names
    package files to register first, so that devices running them can be rolled back.
    """
    now = time.time() if now is None else now
    if not packages:
        raise RolloutError("name at least one package")
    if bool(target.devices) == target.selects:
        raise RolloutError("name the target: devices, or a group, a profile and/or labels")
    infos = [register_package(store, p, now=now) for p in packages]
    for p in previous:
        register_package(store, p, now=now)
    profiles = [i.profile for i in infos]
    if len(set(profiles)) != len(profiles):
        raise RolloutError("give one package per profile; two were compiled for the same profile")
    by_profile = {i.profile: i for i in infos}

    try:
        known = store.devices()
        if target.devices:
            candidates = find_devices(known, target.devices)
        else:
            candidates = select_devices(known, DeviceFilter(group=target.group, profile=target.profile,
                                                            labels=target.labels))
    except RegistryError as exc:
        raise RolloutError(str(exc)) from None
    skipped: dict[str, str] = {}
    chosen: list[DeviceProgress] = []
    for d in candidates:
        package = by_profile.get(d.profile)
        if d.status != "online":
            skipped[d.device_id] = "offline"
        elif package is None:
            skipped[d.device_id] = f"no package for its profile {d.profile!r}"
        else:
            prev_path = None
            baseline = None
            if d.package_id is not None:
                record = store.package(d.package_id)
                if record is not None and Path(record.path).is_file():
                    prev_path = record.path
                baseline = store.latest_benchmark(d.device_id, d.package_id)
            chosen.append(DeviceProgress(
                device_id=d.device_id, wave=0, profile=d.profile, package_id=package.package_id,
                previous_package_id=d.package_id, previous_path=prev_path,
                baseline_p90_ms=baseline.p90_ms if baseline else None,
                baseline_energy_mj=baseline.energy_mj if baseline else None,
            ))
    if not chosen:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "the registry has no such device"
        raise RolloutError(f"no online device of {target.describe()} can take these packages ({why})")
    plan = Plan(packages=tuple(infos), target=target.describe(), strategy=strategy, gates=gates)
    try:
        state = engine.new_state(rollout_id or uuid.uuid4().hex[:8], plan, chosen, now)
    except ValueError as exc:
        raise RolloutError(str(exc)) from None
    save_state(store, state)
    return state, skipped


# --- persistence -------------------------------------------------------------------------


def save_state(store: TelemetryStore, s: RolloutState) -> None:
    store.save_rollout(
        RolloutRow(s.rollout_id, s.status.value, s.plan.to_json(), s.reason, s.next_wave_at, s.created_at,
                   s.updated_at),
        [RolloutWaveRow(s.rollout_id, w.index, w.label, w.status.value, w.started_at, w.finished_at, w.reason)
         for w in s.waves],
        [RolloutDeviceRow(s.rollout_id, d.device_id, d.wave, d.profile, d.package_id, d.previous_package_id,
                          d.previous_path, d.baseline_p90_ms, d.baseline_energy_mj, d.phase.value, d.deployment_id,
                          d.attempt, d.started_at, d.finished_at, d.error, d.p90_ms, d.energy_mj)
         for d in s.devices.values()],
    )


def load_state(store: TelemetryStore, rollout_id: str) -> RolloutState:
    found = store.rollout(rollout_id)
    if found is None:
        raise RolloutError(f"no rollout {rollout_id!r} in {store.path}; `edgefleet rollout status` lists them")
    head, waves, devices = found
    return RolloutState(
        rollout_id=head.rollout_id,
        plan=Plan.from_json(head.plan_json),
        status=RolloutStatus(head.status),
        reason=head.reason,
        next_wave_at=head.next_wave_at,
        created_at=head.created_at,
        updated_at=head.updated_at,
        waves=[WaveProgress(w.wave, w.label, WaveStatus(w.status), w.started_at, w.finished_at, w.reason)
               for w in waves],
        devices={
            d.device_id: DeviceProgress(
                device_id=d.device_id, wave=d.wave, profile=d.profile, package_id=d.package_id,
                previous_package_id=d.previous_package_id, previous_path=d.previous_path,
                baseline_p90_ms=d.baseline_p90_ms, baseline_energy_mj=d.baseline_energy_mj,
                phase=DevicePhase(d.phase), deployment_id=d.deployment_id, attempt=d.attempt,
                started_at=d.started_at, finished_at=d.finished_at, error=d.error, p90_ms=d.p90_ms,
                energy_mj=d.energy_mj)
            for d in devices
        },
    )


def observe(store: TelemetryStore, s: RolloutState, now: float, request: str | None = None) -> Observations:
    """What the store says about every deployment the rollout made that is still of interest."""
    reports: dict[str, DeviceReport] = {}
    for d in s.devices.values():
        if d.deployment_id is None or d.phase not in (DevicePhase.DEPLOYING, DevicePhase.ROLLING_BACK, DevicePhase.DONE):
            continue
        if d.phase is DevicePhase.DONE and d.p90_ms is not None:
            continue
        events = [e for e in store.events(d.deployment_id) if e.device_id == d.device_id]
        if not events:
            continue
        final = next((e for e in reversed(events) if e.phase in (Phase.DONE, Phase.FAILED)), None)
        last = final or events[-1]
        # The benchmark this deployment caused: sent (device clock) no earlier than its first event.
        bench = store.latest_benchmark(d.device_id, events[-1].package_id, since=min(e.ts for e in events))
        reports[d.deployment_id] = DeviceReport(
            phase=last.phase, error=last.error,
            p90_ms=bench.p90_ms if bench else None, energy_mj=bench.energy_mj if bench else None,
        )
    return Observations(now=now, reports=reports, request=request)


# --- running -----------------------------------------------------------------------------


class Pusher(Protocol):
    """The seam to the devices: push a package file to a device, or clear its deployment.

    ``rollback`` marks a push back to the package a device ran before: devices refuse an older
    version unless the deployment carries a signed rollback permission (anti-rollback).
    """

    def push(self, path: Path, device_id: str, deployment_id: str, *, rollback: bool = False) -> None: ...

    def clear(self, device_id: str) -> None: ...


class MqttPusher:
    """Pushes as ``edgefleet push`` does (retained chunks, then a retained deployment), over one connection.

    A rollout pushes the same few packages to many devices: the connection is opened at the first
    push and kept, and each package's chunks are published once (they stay retained), so a wave
    of a thousand devices costs a thousand small deployment messages, not a thousand uploads.
    Use it as a context manager, or call ``close()``.

    Rollbacks are signed with the private key at ``rollback_key`` (one the devices trust), read
    at the first rollback; without it a rollback goes unsigned, and a device that has installed a
    newer version refuses it (it ends ``rollback_failed``, saying why).
    """

    def __init__(self, broker: BrokerURL, *, timeout: float = 30, rollback_key: Path | None = None) -> None:
        self.broker = broker
        self.timeout = timeout
        self.rollback_key = rollback_key
        self._link: BrokerLink | None = None
        self._packages: dict[Path, tuple[Manifest, PackageRef]] = {}  # described, and chunks published

    def push(self, path: Path, device_id: str, deployment_id: str, *, rollback: bool = False) -> None:
        link = self._open()
        if path not in self._packages:
            manifest, ref = describe_package(path)
            link.publish(chunk_messages(path, ref), total=ref.chunk_count())
            self._packages[path] = (manifest, ref)
        manifest, ref = self._packages[path]
        deployment = Deployment(deployment_id=deployment_id, package=ref, profile=manifest.target.profile)
        if rollback:
            deployment = self._sign_rollback(deployment, manifest, device_id)
        # After the chunks (acknowledged above): a device that sees the deployment finds every chunk retained.
        link.publish([(topics.device_deploy(device_id), deployment.to_bytes())], total=1, what="the deployment")
        log.debug("pushed %s to %s as deployment %s", ref.id, device_id, deployment_id)

    def _sign_rollback(self, deployment: Deployment, manifest: Manifest, device_id: str) -> Deployment:
        try:
            if self.rollback_key is None:
                raise ValueError("no signing key given")
            key = keys.load_private(self.rollback_key)
        except ValueError as exc:
            log.warning("rollback of %s not signed (%s): a device that has a newer version refuses it", device_id, exc)
            return deployment
        return sign_rollback(deployment, manifest, key, device=device_id)

    def clear(self, device_id: str) -> None:
        self._open().publish([(topics.device_deploy(device_id), b"")], total=1, what="the deployment")

    def close(self) -> None:
        link, self._link = self._link, None
        self._packages.clear()
        if link is not None:
            link.close()

    def __enter__(self) -> MqttPusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> BrokerLink:
        if self._link is None:
            self._link = BrokerLink(self.broker, timeout=self.timeout).open()
        return self._link


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None, heartbeat_at: float | None, now: float) -> bool:
    """Whether the process named ``owner`` still runs its rollout, as far as we can tell."""
    if owner is None:
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # someone else's process: alive
    return heartbeat_at is not None and now - heartbeat_at < HEARTBEAT_STALE_AFTER


def request(store: TelemetryStore, rollout_id: str, what: str, *, now: float | None = None) -> tuple[RolloutState, bool]:
    """Ask for ``pause`` or ``abort``; returns the state and whether a live process will act on it.

    With no process running the rollout, a pause is applied at once; an abort stays requested
    for whoever runs the rollout next (``edgefleet rollout abort`` runs it, to roll back).
    """
    if what not in ("pause", "abort"):
        raise ValueError(f"unknown request {what!r}")
    now = time.time() if now is None else now
    s = load_state(store, rollout_id)
    if s.status.finished:
        raise RolloutError(f"rollout {rollout_id} is already {s.status.value}")
    if what == "pause" and s.status is not RolloutStatus.RUNNING:
        raise RolloutError(f"rollout {rollout_id} is {s.status.value}; only a running rollout can be paused")
    head = store.rollout_head(rollout_id)
    assert head is not None  # load_state found it
    store.set_rollout_request(rollout_id, what)
    if owner_alive(head.owner, head.heartbeat_at, now):
        return s, True
    if what == "pause":
        s = engine.pause(s, now)
        save_state(store, s)
        store.clear_rollout_request(rollout_id, what)
    return s, False


class RolloutRunner:
    """Runs one rollout to its end (or a pause), from whatever state the store holds.

    ``clock`` and ``sleep`` are injectable so unit tests run without waiting; ``on_note`` gets
    every line of progress.
    """

    def __init__(
        self,
        store: TelemetryStore,
        rollout_id: str,
        pusher: Pusher,
        *,
        poll: float = 0.25,
        on_note: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.rollout_id = rollout_id
        self.pusher = pusher
        self.poll = poll
        self.on_note = on_note or (lambda line: log.info("%s", line))
        self.clock = clock
        self.sleep = sleep
        self.owner = owner or this_process()

    def run(self) -> RolloutState:
        """Claim the rollout, continue it until completed, aborted or paused; release it."""
        s = self._claim()
        try:
            return self._loop(s)
        finally:
            self.store.release_rollout(self.rollout_id, self.owner)

    def _claim(self) -> RolloutState:
        head = self.store.rollout_head(self.rollout_id)
        if head is None:
            raise RolloutError(f"no rollout {self.rollout_id!r} in {self.store.path}")
        now = self.clock()
        if owner_alive(head.owner, head.heartbeat_at, now) and head.owner != self.owner:
            raise RolloutError(
                f"rollout {self.rollout_id} is being run by process {head.owner}; "
                f"use `edgefleet rollout pause` or `abort`, or stop that process first"
            )
        if not self.store.claim_rollout(self.rollout_id, self.owner, now, free=head.owner):
            raise RolloutError(f"another process claimed rollout {self.rollout_id} just now")
        return load_state(self.store, self.rollout_id)

    def _loop(self, s: RolloutState) -> RolloutState:
        if s.status.finished:
            return s
        # Deployments in flight when the last process stopped: their answers may have been lost.
        in_flight = {d.device_id: d.deployment_id for d in s.devices.values()
                     if d.phase in (DevicePhase.DEPLOYING, DevicePhase.ROLLING_BACK)}
        first = True
        head = self._head()
        if head.request == "pause":  # running it again means continue: an old pause request is void
            self.store.clear_rollout_request(self.rollout_id, "pause")
        if s.status is RolloutStatus.PAUSED and head.request != "abort":  # a paused rollout aborts from paused
            s = engine.resume(s, self.clock())
            self.on_note("resumed")
        while True:
            now = self.clock()
            head = self._head()
            result = engine.step(s, observe(self.store, s, now, head.request))
            s = result.state
            actions, notes = list(result.actions), list(result.notes)
            if first and in_flight:
                first = False
                # Only those the first step left as they were (not answered, not just re-pushed to roll back).
                unchanged = {d for d, dep in in_flight.items() if s.devices[d].deployment_id == dep}
                again = engine.redeliver(s, now, only=unchanged)
                s = again.state
                actions += again.actions
                notes += again.notes
            save_state(self.store, s)  # before pushing: the store always knows every deployment id
            if head.request:
                self.store.clear_rollout_request(self.rollout_id, head.request)
            for note in notes:
                self.on_note(note)
            self._perform(actions)
            self.store.heartbeat_rollout(self.rollout_id, self.owner, self.clock())
            if s.status.finished or s.status is RolloutStatus.PAUSED:
                return s
            self.sleep(self.poll)

    def _head(self) -> RolloutRow:
        head = self.store.rollout_head(self.rollout_id)
        if head is None:
            raise RolloutError(f"rollout {self.rollout_id} vanished from {self.store.path}")
        return head

    def _perform(self, actions: Sequence[engine.Action]) -> None:
        for action in actions:
            if isinstance(action, engine.Push):
                self.pusher.push(Path(action.path), action.device_id, action.deployment_id, rollback=action.rollback)
            else:
                self.pusher.clear(action.device_id)
