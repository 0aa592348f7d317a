"""Fault scenarios against real processes, shared by tests/test_faults.py and bench/reliability.py.

Each scenario builds its own world (a private Mosquitto with persistence on, as production
brokers run, a real agent process, a data directory), injects one fault and returns an
``Outcome``: whether the agent survived, whether the deployment ended in the state the protocol
defines for that fault, and how much telemetry the agent accepted but nobody received.

Telemetry accounting: every report the agent accepts goes into its SQLite outbox, whose
AUTOINCREMENT sequence counts them (a rolled-back insert, e.g. on a full disk, is not counted:
it was refused, not accepted). An ``Observer`` with a persistent MQTT session, so that it misses
nothing while the broker restarts, records every distinct report on the device's events,
telemetry and system topics. Lost = accepted - still pending in the outbox - received (duplicates,
which at-least-once delivery allows, count once).

The scenarios take ``run``, the repetition number, to vary what repeats can vary (which crash
point); tests call them with each variant, the bench round-robins.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import paho.mqtt.client as mqtt
from conftest import AgentProcess, Mosquitto, TcpProxy, make_package

from edgefleet.agent import topics
from edgefleet.agent.errors import PackageError
from edgefleet.agent.install import ModelStore
from edgefleet.agent.messages import Deployment, PackageRef
from edgefleet.agent.package import file_sha256
from edgefleet.agent.transport import BrokerURL, make_client
from edgefleet.deploy.push import (
    chunk_messages,
    describe_package,
    new_deployment_id,
    push_package,
)

CHUNK = 4096
PAD = 1_000_000  # bytes of incompressible weights: ~250 chunks, a transfer that can be cut in the middle
PROFILE = "raspberry-pi-4"
INSTALL_POINTS = ("chunk:0", "chunk:3", "verified", "staging", "staged", "activating", "activated", "benchmarking")
CRASH_LOOP_ROLLBACK_POINTS = ("rollback:decided", "activating", "rollback:activated", "rollback:reported")
FAILED_TEST_ROLLBACK_POINTS = ("rollback:discarding", "rollback:discarded")


class FaultUnavailable(RuntimeError):
    """This machine cannot inject the fault (e.g. no permission to mount a small filesystem)."""


@dataclass
class Outcome:
    fault: str
    survived: bool  # the agent never died except where the scenario killed it, and stopped cleanly
    defined: bool  # the deployment ended done or failed as specified, and a complete model is served
    accepted: int  # reports the agent accepted into its outbox
    received: int  # of those, how many the observer (the fleet side) received
    pending: int  # still in the outbox at the end (sent later, not lost)
    detail: str = ""
    variant: str = ""  # what this repetition varied, e.g. the crash point

    @property
    def lost(self) -> int:
        # received can exceed what the outbox accepted: a report the full disk refused is published
        # directly when the broker is there (agent.daemon's _report), and arrives without being counted.
        return max(0, self.accepted - self.pending - self.received)

    @property
    def ok(self) -> bool:
        return self.survived and self.defined and self.lost == 0


@dataclass
class Lab:
    """Where scenarios put their files, and the signing key pair their packages use."""

    workdir: Path
    key: Path
    trust: Path


# --- observing -----------------------------------------------------------------------------


class Observer:
    """The fleet side's view of one device: a persistent-session subscriber to its reports."""

    def __init__(self, broker_url: str, device_id: str) -> None:
        url = BrokerURL.parse(broker_url)
        self.device_id = device_id
        self.reports: dict[bytes, str] = {}  # distinct payload -> topic, in arrival order
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = make_client(url, f"observer-{device_id}", clean_start=False)
        self._client.reconnect_delay_set(min_delay=0.2, max_delay=2)
        wanted = [(topics.events(device_id), 1), (topics.telemetry(device_id), 1), (topics.system(device_id), 1)]
        self._client.on_connect = lambda c, *_: c.subscribe(wanted)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(url.host, url.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"the observer could not subscribe at {broker_url}")

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        with self._cond:
            self.reports.setdefault(bytes(msg.payload), msg.topic)  # type: ignore[attr-defined]
            self._cond.notify_all()

    def payloads(self) -> list[bytes]:
        with self._cond:
            return list(self.reports)

    def events(self) -> list[dict]:  # type: ignore[type-arg]
        with self._cond:
            return [json.loads(p) for p, t in self.reports.items() if t.endswith("/events")]

    def wait_event(self, deployment_id: str, phases: Iterable[str] = ("done", "failed"), timeout: float = 90) -> dict:  # type: ignore[type-arg]
        """The first event of ``deployment_id`` in one of ``phases``."""
        wanted = set(phases)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events():
                    if e["deployment_id"] == deployment_id and e["phase"] in wanted:
                        return e
                if not self._cond.wait(max(0.0, deadline - time.monotonic())) and time.monotonic() >= deadline:
                    raise TimeoutError(f"no {'/'.join(sorted(wanted))} event for deployment {deployment_id} "
                                       f"in {timeout:.0f} s; events: {[(e['deployment_id'], e['phase']) for e in self.events()]}")

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def outbox_counts(data_dir: Path) -> tuple[int, list[bytes]]:
    """(reports ever accepted, payloads still pending) from an agent's outbox, read-only."""
    path = data_dir / "outbox.sqlite"
    if not path.exists():
        return 0, []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        pending = [bytes(r[0]) for r in db.execute("SELECT payload FROM outbox ORDER BY id")]
    finally:
        db.close()
    return (int(row[0]) if row else 0), pending


def serving(data_dir: Path) -> str | None:
    """The version of the serving model if it is complete (every file matches its manifest hash), else None."""
    try:
        current = ModelStore(data_dir).current()
    except (PackageError, OSError):  # an unreadable install is exactly what this reports, as None
        return None
    if current is None:
        return None
    for name, entry in current.manifest.files.items():
        path = current.directory / name
        if not path.is_file() or file_sha256(path) != entry.sha256:
            return None
    return current.manifest.version


# --- the rig: broker, agent(s), observer ---------------------------------------------------


class Rig:
    """One device under test: a private persistent Mosquitto, its agent processes and an observer."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.dir = lab.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        self.dir.mkdir(parents=True)
        self.data = self.dir / "data"
        self.data.mkdir()
        self.device_id = f"fault-{name}-{uuid.uuid4().hex[:6]}"
        self.broker = Mosquitto(self.dir, persistent=True)
        self.broker.start()
        self.url = self.broker.url
        self.observer = Observer(self.url, self.device_id)
        self.agents: list[AgentProcess] = []
        self.unexpected_deaths = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_agent(self, *, crash_at: str | None = None, via: str | None = None,
                    extra: tuple[str, ...] = ("--system-interval", "2")) -> AgentProcess:
        env = {"EDGEFLEET_AGENT_CRASH_AT": crash_at} if crash_at else None
        agent = AgentProcess(via or self.url, self.device_id, self.data, self.lab.trust, extra=extra, env=env).start()
        self.agents.append(agent)
        return agent

    def stop_agent(self, agent: AgentProcess) -> bool:
        """Stop gracefully; False if it had died on its own or did not exit cleanly."""
        if not agent.alive():
            self.unexpected_deaths += 1
            return False
        agent.stop()
        return agent.proc is not None and agent.proc.returncode == 0

    def wait_event(self, deployment_id: str, phases: Iterable[str] = ("done", "failed"), timeout: float = 90) -> dict:  # type: ignore[type-arg]
        """The observer's ``wait_event``; a timeout carries the end of each agent's log, to see why."""
        try:
            return self.observer.wait_event(deployment_id, phases, timeout)
        except TimeoutError as exc:
            logs = "\n".join(f"--- {a.log_path.name}:\n" + "\n".join(a.log().splitlines()[-25:]) for a in self.agents)
            raise TimeoutError(f"{exc}\n{logs}") from None

    def package(self, version: str, **kw: object) -> Path:
        return make_package(self.dir / f"v{version}.efpkg", self.lab.key, version=version, **kw)  # type: ignore[arg-type]

    def deploy(self, package: Path, *, chunk_size: int = CHUNK) -> Deployment:
        return push_package(package, broker=BrokerURL.parse(self.url), device=self.device_id, chunk_size=chunk_size)

    def install(self, package: Path) -> dict:  # type: ignore[type-arg]
        """Push and wait for the outcome event."""
        return self.wait_event(self.deploy(package).deployment_id)

    def install_first_and_stop(self) -> dict:  # type: ignore[type-arg]
        """v1 installed by an agent that is then stopped, for scenarios that start the agents they kill."""
        agent = self.start_agent()
        first = self.install(self.package("1"))
        self.stop_agent(agent)
        self.agents.remove(agent)
        return first

    def push_part(self, package: Path, parts: int) -> tuple[Deployment, list[tuple[str, bytes]], int]:
        """Publish ``package``'s deployment and the first 1/``parts`` of its chunks, and wait until the
        agent has stored them: the deployment, all its chunk messages, and how many were sent."""
        deployment, chunks = _split_push(package)
        sent = len(chunks) // parts
        publish_all(self.url, [(topics.device_deploy(self.device_id), deployment.to_bytes()), *chunks[:sent]])
        self.wait_chunks(deployment.package, sent)
        return deployment, chunks, sent

    def have_chunks(self, ref: PackageRef) -> int:
        try:
            return len(json.loads((self.data / "downloads" / f"{ref.sha256}.chunks").read_text()))
        except (OSError, ValueError):
            return 0

    def wait_chunks(self, ref: PackageRef, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.have_chunks(ref) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agent had {self.have_chunks(ref)} of {count} chunks after {timeout:.0f} s")
            time.sleep(0.05)

    def outcome(self, fault: str, *, defined: bool, survived: bool = True, detail: str = "", variant: str = "",
                settle: float = 20) -> Outcome:
        """Stop every agent, then count what the observer received of what the agent accepted."""
        stopped = [self.stop_agent(a) for a in self.agents if a.alive()]  # every one, not up to the first failure
        clean = all(stopped)
        accepted, pending = outbox_counts(self.data)
        pending_set = set(pending)
        deadline = time.monotonic() + settle
        while True:
            received = sum(1 for p in self.observer.payloads() if p not in pending_set)
            if accepted - len(pending) - received <= 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return Outcome(fault=fault, survived=survived and clean and self.unexpected_deaths == 0, defined=defined,
                       accepted=accepted, received=received, pending=len(pending), detail=detail, variant=variant)

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.observer.close()
        self.broker.stop()


def publish_all(broker_url: str, messages: Iterable[tuple[str, bytes]], *, retain: bool = True) -> None:
    """Publish raw messages at QoS 1 (retained, like a push) and wait for every acknowledgement."""
    url = BrokerURL.parse(broker_url)
    client = make_client(url)
    client.connect(url.host, url.port)
    client.loop_start()
    try:
        for info in [client.publish(t, p, qos=1, retain=retain) for t, p in messages]:
            info.wait_for_publish(30)
    finally:
        client.loop_stop()
        client.disconnect()


def _split_push(package: Path) -> tuple[Deployment, list[tuple[str, bytes]]]:
    """A deployment and its chunk messages, for a test that publishes them itself."""
    _, ref = describe_package(package, CHUNK)
    deployment = Deployment(deployment_id=new_deployment_id(), package=ref, profile=PROFILE)
    return deployment, list(chunk_messages(package, ref))


def _crash(rig: Rig, point: str, timeout: float = 60) -> bool:
    """Start an agent that kills itself at ``point``; True if it did."""
    agent = rig.start_agent(crash_at=point)
    assert agent.proc is not None
    try:
        died = agent.proc.wait(timeout) == -9
    except subprocess.TimeoutExpired:
        return False
    rig.agents.remove(agent)  # killed on purpose: not an unexpected death
    return died


# --- the scenarios -------------------------------------------------------------------------


def broker_restart_during_transfer(lab: Lab, run: int = 0) -> Outcome:
    """The broker restarts when half the chunks are on the device; the download resumes and finishes."""
    with Rig(lab, "broker-restart") as rig:
        agent = rig.start_agent()
        first = rig.install(rig.package("1"))
        deployment, chunks, half = rig.push_part(rig.package("2", scale=3.0, pad_bytes=PAD), 2)
        rig.broker.stop()  # SIGTERM: Mosquitto saves retained messages and sessions
        rig.broker.start()
        publish_all(rig.url, chunks[half:])
        event = rig.wait_event(deployment.deployment_id)
        alive = agent.alive()
        version = serving(rig.data)
        return rig.outcome("broker restart during a transfer", survived=alive,
                           defined=first["phase"] == "done" and event["phase"] == "done" and version == "2",
                           detail=f"restarted at chunk {half} of {len(chunks)}; then {event['phase']}, serving v{version}")


def network_partition(lab: Lab, run: int = 0, seconds: float = 30.0) -> Outcome:
    """The device is cut off for ``seconds`` while a deployment is pushed; it reconnects, installs, reports."""
    with Rig(lab, "partition") as rig:
        proxy = TcpProxy(rig.broker.port).restore()
        try:
            agent = rig.start_agent(via=proxy.url)
            first = rig.install(rig.package("1"))
            proxy.cut()
            cut_at = time.monotonic()
            deployment = rig.deploy(rig.package("2", scale=3.0))
            time.sleep(max(0.0, seconds - (time.monotonic() - cut_at)))
            _, held = outbox_counts(rig.data)
            proxy.restore()
            event = rig.wait_event(deployment.deployment_id, timeout=120)
            version = serving(rig.data)
            return rig.outcome(f"network partition ({seconds:.0f} s)", survived=agent.alive(),
                               defined=first["phase"] == "done" and event["phase"] == "done" and version == "2",
                               detail=f"{len(held)} reports waited in the outbox; then {event['phase']}, "
                                      f"serving v{version}")
        finally:
            proxy.cut()


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[None]:
    """Mount a tmpfs of ``size`` at ``path`` (needs root or CAP_SYS_ADMIN)."""
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FaultUnavailable(f"cannot mount a {size} tmpfs at {path}: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for block in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    written += f.write(b"\0" * block)
    return written


def disk_full_during_download(lab: Lab, run: int = 0) -> Outcome:
    """The data directory's filesystem fills up mid-download: the agent reports "disk full", keeps the
    old model, removes its partial download, and installs the package once space is back."""
    with Rig(lab, "disk-full") as rig, small_filesystem(rig.data, "4m"):
        agent = rig.start_agent()
        first = rig.install(rig.package("1"))
        deployment, chunks, quarter = rig.push_part(rig.package("2", scale=3.0, pad_bytes=PAD), 4)
        filler = rig.data / "filler"
        fill(filler)  # something else on the device takes all the space
        publish_all(rig.url, chunks[quarter:])
        failed = rig.wait_event(deployment.deployment_id)
        leftovers = sorted(p.name for p in (rig.data / "downloads").iterdir())
        during = serving(rig.data)
        filler.unlink()
        again = Deployment(deployment_id=new_deployment_id(), package=deployment.package, profile=PROFILE)
        publish_all(rig.url, [(topics.device_deploy(rig.device_id), again.to_bytes())])
        retried = rig.wait_event(again.deployment_id)
        after = serving(rig.data)
        defined = (first["phase"] == "done" and failed["phase"] == "failed" and "disk full" in failed["error"]
                   and during == "1" and not leftovers and retried["phase"] == "done" and after == "2")
        return rig.outcome("disk full during a download", survived=agent.alive(), defined=defined,
                           detail=f"first try {failed['phase']} ({failed['error'][:60]}...), serving v{during}, "
                                  f"{len(leftovers)} partial files left; after freeing space {retried['phase']}, "
                                  f"serving v{after}")


def sigkill_during_install(lab: Lab, run: int = 0) -> Outcome:
    """SIGKILL at one of the download/install points; a complete model is served, a restart finishes."""
    point = INSTALL_POINTS[run % len(INSTALL_POINTS)]
    with Rig(lab, "kill-install") as rig:
        first = rig.install_first_and_stop()
        v2 = rig.package("2", scale=3.0)
        killer = threading.Thread(target=lambda: rig.deploy(v2, chunk_size=256))
        died = _crash_while(rig, point, killer)
        right_after = serving(rig.data)
        deployment_id = _latest_deployment(rig)
        agent = rig.start_agent()
        event = rig.wait_event(deployment_id)
        after = serving(rig.data)
        staging = list((rig.data / "packages").glob(".staging-*"))
        defined = (first["phase"] == "done" and died and right_after in ("1", "2") and event["phase"] == "done"
                   and after == "2" and not staging)
        return rig.outcome("SIGKILL during download/install", survived=agent.alive(), defined=defined, variant=point,
                           detail=f"killed at {point}: serving v{right_after} right after; restart: "
                                  f"{event['phase']}, serving v{after}")


def _crash_while(rig: Rig, point: str, action: threading.Thread) -> bool:
    """Start an agent that dies at ``point`` and run ``action`` (which makes it get there)."""
    agent = rig.start_agent(crash_at=point)
    assert agent.proc is not None
    action.start()
    try:
        died = agent.proc.wait(60) == -9
    except subprocess.TimeoutExpired:
        died = False
    action.join(60)
    if died:
        rig.agents.remove(agent)  # killed on purpose: not an unexpected death
    return died


def _latest_deployment(rig: Rig) -> str:
    """The id of the deployment retained for the device, read back from the broker."""
    got: list[bytes] = []
    url = BrokerURL.parse(rig.url)
    client = make_client(url)
    client.on_connect = lambda c, *_: c.subscribe(topics.device_deploy(rig.device_id), 1)
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.connect(url.host, url.port)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    if not got:
        raise TimeoutError("no retained deployment for the device")
    return str(json.loads(got[-1])["deployment_id"])


def sigkill_during_crash_loop_rollback(lab: Lab, run: int = 0) -> Outcome:
    """A model crashes the agent three times; the agent is killed again while rolling back to the
    previous model. After a restart it serves a complete model, finishes the rollback, reports it."""
    point = CRASH_LOOP_ROLLBACK_POINTS[run % len(CRASH_LOOP_ROLLBACK_POINTS)]
    with Rig(lab, "kill-rollback") as rig:
        first = rig.install_first_and_stop()
        deployment = rig.deploy(rig.package("2", scale=3.0))
        # v2 "crashes the runtime" each time it is benchmarked, as a model with a bad kernel would.
        crashes = sum(_crash(rig, "benchmarking") for _ in range(3))
        died = _crash(rig, point)  # this start rolls back, and is killed in the middle of it
        right_after = serving(rig.data)
        agent = rig.start_agent()
        event = rig.wait_event(deployment.deployment_id, phases=("failed",))
        after = serving(rig.data)
        defined = (first["phase"] == "done" and crashes == 3 and died and right_after in ("1", "2")
                   and "rolled back to tiny@1" in event["error"] and after == "1")
        return rig.outcome("SIGKILL during a crash-loop rollback", survived=agent.alive(), defined=defined,
                           variant=point,
                           detail=f"killed at {point}: serving v{right_after} right after; restart: failed, "
                                  f"serving v{after}")


def sigkill_during_failed_install_rollback(lab: Lab, run: int = 0) -> Outcome:
    """A package fails its test vectors and the agent is killed while discarding it; after a restart
    it still serves the old model and reports the deployment failed."""
    point = FAILED_TEST_ROLLBACK_POINTS[run % len(FAILED_TEST_ROLLBACK_POINTS)]
    with Rig(lab, "kill-discard") as rig:
        first = rig.install_first_and_stop()
        bad = rig.package("2", expected_shift=1.0)
        died = _crash_while(rig, point, threading.Thread(target=lambda: rig.deploy(bad)))
        right_after = serving(rig.data)
        deployment_id = _latest_deployment(rig)
        agent = rig.start_agent()
        event = rig.wait_event(deployment_id)
        after = serving(rig.data)
        leftovers = [p.name for p in (rig.data / "packages").iterdir() if p.name.startswith(".")]
        defined = (first["phase"] == "done" and died and right_after == "1" and event["phase"] == "failed"
                   and "test vector" in event["error"] and after == "1" and not leftovers)
        return rig.outcome("SIGKILL while discarding a package that failed its tests", survived=agent.alive(),
                           defined=defined, variant=point, detail=f"killed at {point}: serving v{right_after}; restart: "
                                                   f"{event['phase']}, serving v{after}")


def corrupted_chunk(lab: Lab, run: int = 0) -> Outcome:
    """One chunk arrives with a wrong hash: it is refused, nothing is installed; the right chunk,
    published again, completes the deployment."""
    with Rig(lab, "corrupt") as rig:
        agent = rig.start_agent()
        first = rig.install(rig.package("1"))
        deployment, chunks = _split_push(rig.package("2", scale=3.0, pad_bytes=PAD // 10))
        bad_index = random.Random(run).randrange(len(chunks))
        topic, good = chunks[bad_index]
        bad = bytes([good[0] ^ 0xFF]) + good[1:]
        publish_all(rig.url, [(topics.device_deploy(rig.device_id), deployment.to_bytes()),
                              *chunks[:bad_index], (topic, bad), *chunks[bad_index + 1:]])
        rig.wait_chunks(deployment.package, len(chunks) - 1)
        time.sleep(1)  # give a wrongly accepted chunk time to show
        refused = rig.have_chunks(deployment.package) == len(chunks) - 1 and "wrong sha256" in agent.log()
        during = serving(rig.data)
        publish_all(rig.url, [(topic, good)])  # the pusher publishes the chunk again
        event = rig.wait_event(deployment.deployment_id)
        after = serving(rig.data)
        defined = first["phase"] == "done" and refused and during == "1" and event["phase"] == "done" and after == "2"
        return rig.outcome("corrupted chunk", survived=agent.alive(), defined=defined,
                           detail=f"chunk {bad_index} of {len(chunks)} corrupted: refused={refused}, serving "
                                  f"v{during}; republished: {event['phase']}, serving v{after}")


def duplicated_and_reordered_messages(lab: Lab, run: int = 0) -> Outcome:
    """Chunks shuffled and each sent twice, the deployment sent three times, then an older deployment:
    the package is installed exactly once and the older deployment is ignored."""
    with Rig(lab, "dup-order") as rig:
        agent = rig.start_agent()
        first = rig.install(rig.package("1"))
        deployment, chunks = _split_push(rig.package("2", scale=3.0, pad_bytes=PAD // 10))
        shuffled = chunks * 2
        random.Random(run).shuffle(shuffled)
        deploy_topic = topics.device_deploy(rig.device_id)
        half = len(shuffled) // 2
        publish_all(rig.url, [*shuffled[:half], (deploy_topic, deployment.to_bytes()), *shuffled[half:],
                              (deploy_topic, deployment.to_bytes()), (deploy_topic, deployment.to_bytes())])
        done = rig.wait_event(deployment.deployment_id)
        older_deployment, older_chunks = _split_push(rig.package("3", scale=5.0))
        older = older_deployment.model_copy(update={"issued_at": deployment.issued_at - 3600})
        # A marker after it: deployments are handled in order, so once the marker is done the older one was seen.
        marker = Deployment(deployment_id=new_deployment_id(), package=deployment.package, profile=PROFILE)
        publish_all(rig.url, [*older_chunks, (deploy_topic, older.to_bytes()), (deploy_topic, marker.to_bytes())])
        marked = rig.wait_event(marker.deployment_id)
        events = rig.observer.events()
        installs = [e for e in events if e["deployment_id"] == deployment.deployment_id and e["phase"] == "installing"]
        outcomes = [e for e in events if e["deployment_id"] == deployment.deployment_id and e["phase"] in ("done", "failed")]
        older_seen = [e for e in events if e["deployment_id"] == older.deployment_id]
        after = serving(rig.data)
        defined = (first["phase"] == "done" and done["phase"] == "done" and len(installs) == 1 and len(outcomes) == 1
                   and not older_seen and marked["phase"] == "done" and after == "2")
        return rig.outcome("duplicated and out-of-order messages", survived=agent.alive(), defined=defined,
                           detail=f"{len(chunks)} chunks x2 shuffled, deployment x3: installed {len(installs)}x; "
                                  f"older deployment: {len(older_seen)} events; serving v{after}")


def collector_restart_during_rollout(lab: Lab, run: int = 0) -> Outcome:
    """A named collector (persistent session) is stopped after the canary and started again after the
    rollout finished: the rollout completes, and the collector's store holds every report of every device."""
    from edgefleet.deploy.collector import Collector
    from edgefleet.deploy.store import TelemetryStore

    with Rig(lab, "collector") as rig:
        group = f"g{uuid.uuid4().hex[:6]}"
        ids = [rig.device_id, f"{rig.device_id}-b"]
        datas = [rig.data, rig.dir / "data-b"]
        store = TelemetryStore(rig.dir / "collected.db")
        name = f"collector-{uuid.uuid4().hex[:6]}"
        collector = Collector(BrokerURL.parse(rig.url), store, client_id=name).start(timeout=10)
        agents = [AgentProcess(rig.url, d, p, lab.trust, extra=("--group", group, "--system-interval", "0")).start()
                  for d, p in zip(ids, datas, strict=True)]
        rig.agents += agents
        try:
            for d in ids:
                collector.wait_for(lambda d=d: store.device(d) is not None, timeout=30)
            argv = [str(Path(sys.executable).parent / "edgefleet"), "rollout", "start", str(rig.package("1")),
                    "--group", group, "--canary", "1", "--waves", "100", "--wait-between", "3s",
                    "--broker", rig.url, "--db", str(rig.dir / "fleet.db"), "--json"]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            # Down from the canary's first report until the rollout has finished.
            collector.wait_for(lambda: any(store.device_events(d) for d in ids), timeout=60)
            collector.stop()
            out, err = proc.communicate(timeout=180)
            record = json.loads(out) if proc.returncode in (0, 1) and out else {}
            collector = Collector(BrokerURL.parse(rig.url), store, client_id=name).start(timeout=10)
            alive = all(a.alive() for a in agents)
            stopped = [rig.stop_agent(a) for a in agents]
            clean = all(stopped)
            accepted = pending = received = 0
            for d, p in zip(ids, datas, strict=True):
                total, waiting = outbox_counts(p)
                accepted += total
                pending += len(waiting)

            def stored() -> int:
                return sum(len(store.device_events(d, limit=10_000)) + len(list(store.iter_benchmarks(device_id=d)))
                           for d in ids)

            collector.wait_for(lambda: stored() >= accepted - pending, timeout=20)
            received = stored()
            defined = record.get("status") == "completed" and all(v == "1" for v in map(serving, datas))
            return Outcome("collector restart during a rollout", survived=alive and clean, defined=defined,
                           accepted=accepted, received=received, pending=pending,
                           detail=f"rollout {record.get('status', err.decode(errors='replace')[-200:])}; "
                                  f"{received} reports stored of {accepted - pending} delivered")
        finally:
            collector.stop()
            store.close()


def collector_killed_under_load(lab: Lab, run: int = 0) -> Outcome:
    """``edgefleet collect`` (named: a persistent session) dies by SIGKILL holding a batch it has received
    but not stored, while a device streams reports, and is started again: every report the broker
    accepted is stored, once. It holds because the collector acknowledges only what it has stored."""
    from edgefleet.agent.messages import DeploymentEvent, Phase

    with Rig(lab, "collector-kill") as rig:
        db = rig.dir / "collected.db"
        argv = [str(Path(sys.executable).parent / "edgefleet"), "collect", "--broker", rig.url, "--db", str(db),
                "--client-id", f"collector-{uuid.uuid4().hex[:6]}", "--interval", "60"]
        url = BrokerURL.parse(rig.url)
        sender = make_client(url, f"sender-{rig.device_id}")
        sender.connect(url.host, url.port, keepalive=10)
        sender.loop_start()

        def send(deployment_id: str) -> mqtt.MQTTMessageInfo:
            event = DeploymentEvent(device_id=rig.device_id, deployment_id=deployment_id, package_id="p", phase=Phase.DONE)
            return sender.publish(topics.events(rig.device_id), event.to_bytes(), qos=1)

        def stored(prefix: str) -> int:
            if not db.exists():
                return 0
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                try:
                    return int(conn.execute("SELECT COUNT(*) FROM events WHERE device_id = ? AND deployment_id LIKE ?",
                                            (rig.device_id, f"{prefix}-%")).fetchone()[0])
                except sqlite3.OperationalError:  # the collector has not created its tables yet
                    return 0

        def start(crash_at: str | None = None) -> subprocess.Popen[bytes]:
            env = {**os.environ, "EDGEFLEET_AGENT_CRASH_AT": crash_at} if crash_at else None
            return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

        collector = start()
        try:
            # The session exists once a probe gets through; from then on the broker keeps what is sent.
            probes = 0
            while stored("probe") == 0:
                probes += 1
                send(f"probe-{probes}").wait_for_publish(5)
                time.sleep(0.2)
            collector.terminate()
            collector.wait(10)
            collector = start(crash_at="collector:storing")  # dies on its first batch of the stream
            total, restart_at = 3000, random.Random(run).randrange(300, 2700)
            infos, died = [], None
            for i in range(total):
                infos.append(send(f"d-{i}"))
                if i == restart_at:
                    died = collector.wait(30)
                    collector = start()
            for info in infos:
                info.wait_for_publish(30)
            deadline = time.monotonic() + 60
            while stored("d") < total and time.monotonic() < deadline:
                time.sleep(0.2)
            received = stored("d")
            survived = collector.poll() is None
        finally:
            collector.terminate()
            collector.wait(10)
            sender.loop_stop()
            sender.disconnect()
        # "defined": the collector really died at the crash point, holding a batch it had not stored.
        return Outcome("collector killed (SIGKILL) holding unstored reports", survived=survived,
                       defined=died == -signal.SIGKILL,
                       accepted=total, received=received, pending=0, variant=f"restarted after report {restart_at}",
                       detail=f"{received} of {total} reports stored after the restart")

SCENARIOS: dict[str, Callable[[Lab, int], Outcome]] = {
    "broker-restart": broker_restart_during_transfer,
    "partition": network_partition,
    "disk-full": disk_full_during_download,
    "kill-install": sigkill_during_install,
    "kill-rollback": sigkill_during_crash_loop_rollback,
    "kill-discard": sigkill_during_failed_install_rollback,
    "corrupt-chunk": corrupted_chunk,
    "dup-order": duplicated_and_reordered_messages,
    "collector-restart": collector_restart_during_rollout,
    "collector-kill": collector_killed_under_load,
}
