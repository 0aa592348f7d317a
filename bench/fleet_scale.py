"""The fleet at scale: a thousand simulated devices on the real protocol, a staged rollout, telemetry ingest, the dashboard.

    .venv/bin/python bench/fleet_scale.py [--devices 1000] [--processes 4] [--telemetry 30] [--collectors 1]
                                          [--broker mqtt://HOST:PORT] [--requests 20] [--json]

What it does, in one run (a few minutes at the defaults; ``--devices N`` to scale):

1. **Broker.** A private Mosquitto on a free port, started with limits raised for a burst
   (``max_queued_messages 1000000``, ``max_inflight_messages 1000``, ``persistence false``), so
   the broker never drops a QoS 1 message it queued for a slow collector. ``--broker URL`` uses
   yours instead (its limits then decide: Mosquitto's default ``max_queued_messages 1000`` drops
   messages under this burst, and the bench reports them as lost).
2. **Devices.** ``--devices`` simulated devices in ``--processes`` worker processes, each
   multiplexing its share of paho clients on one ``selectors`` loop (paho's external-loop API),
   one MQTT connection per device. Each speaks the agent's protocol (``docs/protocol.md``): a
   retained ``DeviceState`` with labels and a last will, the device's deploy topic; on a
   ``Deployment`` it subscribes to the package's retained chunks, checks every chunk's and the
   whole file's SHA-256, verifies the package's signature and manifest (``verify_package``), and
   reports ``downloading``/``verifying``/``installing``/``benchmarking``/``done`` events, a
   ``BenchmarkReport`` and its new retained state. What it skips: loading the model into a
   runtime, its test vectors and the timed runs (the report's figures are synthetic).
3. **Rollout.** The real ``plan_rollout`` + ``RolloutRunner`` with ``MqttPusher``, targeting the
   devices by label, canary then waves (``--canary``, ``--waves``), with a real ``Collector``
   filling a SQLite store. Printed: the status, each wave's duration, devices done.
4. **Ingest**, twice; each time every device publishes ``--telemetry`` benchmark reports at QoS
   1 as fast as it can (serialised beforehand), and SQLite itself counts what was stored.
   *Live*: the collector(s) store them as they come; the rate runs from the first publish to the
   last row, so on a small machine the simulated devices' share of the CPU caps it. ``--collectors
   N`` (N > 1) shares this load: the in-process collector and N-1 ``edgefleet collect --shared``
   processes, one shared subscription, the same SQLite file. *Backlog*: one collector with a
   persistent session is away while the devices publish (the broker queues for it), then drains
   the backlog alone: the collector's own rate. Then the same work without MQTT, one thread:
   validating reports, and storing them in batches. Nothing may be lost: published (acknowledged
   by the broker) is compared with stored.
5. **Dashboard.** ``edgefleet dashboard`` (uvicorn) over that store; ``--requests`` timed HTTP
   GETs of the fleet table, a device page, the rollout page and their JSON twins: p50 and p95.

Figures go to ``docs/benchmarks.md`` ("Fleet at scale"). Run it with ``nice`` on a shared machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from edgefleet.agent import keys, topics
from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.keys import TrustStore
from edgefleet.agent.messages import (
    TELEMETRY,
    BenchmarkReport,
    Deployment,
    DeploymentEvent,
    DeviceState,
    InstalledModel,
    LatencyStats,
    Phase,
    PowerReading,
    parse,
)
from edgefleet.agent.package import (
    Manifest,
    Target,
    TensorSpec,
    verify_package,
    write_package,
)
from edgefleet.agent.transport import BrokerURL, make_client
from edgefleet.deploy.collector import BATCH_MAX, Collector
from edgefleet.deploy.push import clear_package, describe_package
from edgefleet.deploy.rollout import Gates, Strategy
from edgefleet.deploy.rollout_runner import MqttPusher, RolloutRunner, plan_rollout
from edgefleet.deploy.rollout_runner import Target as RolloutTarget
from edgefleet.deploy.store import TelemetryStore

log = logging.getLogger("fleet_scale")

PROFILE = "raspberry-pi-4"
MODEL_BYTES = 300 * 1024  # two chunks at the default 256 KiB chunk size
MOSQUITTO_LIMITS = "max_queued_messages 1000000\nmax_inflight_messages 1000\nmax_connections -1\n"


@dataclass(frozen=True)
class BenchConfig:
    devices: int = 1000
    processes: int = 4
    telemetry: int = 30            # benchmark reports per device in the ingest phase
    canary: int = 10
    waves: tuple[float, ...] = (10.0, 50.0, 100.0)
    requests: int = 20             # timed GETs per dashboard page
    broker: str | None = None      # None: a private Mosquitto with raised limits
    device_timeout: float = 120.0
    dashboard: bool = True
    collectors: int = 1            # > 1: that many collectors share one subscription (one in-process)


@dataclass
class BenchResult:
    devices: int
    broker: str
    rollout_id: str = ""
    rollout_status: str = ""
    rollout_seconds: float = 0.0
    waves: list[dict[str, Any]] = field(default_factory=list)
    devices_done: int = 0
    devices_running_new: int = 0
    devices_failed: int = 0          # deployments the simulated devices failed (their own count)
    published: int = 0
    stored: int = 0
    ingest_seconds: float = 0.0
    publish_seconds: float = 0.0     # until the broker had acknowledged every report
    drain_published: int = 0         # the backlog phase: published while no collector listened, then drained
    drain_stored: int = 0
    drain_seconds: float = 0.0
    drain_rate: float = 0.0
    parse_rate: float = 0.0          # the collector's work without MQTT: validating reports, per second
    write_rate: float = 0.0          # and storing them in SQLite in batches, per second
    ingest_rate: float = 0.0
    rejected: int = 0
    store_errors: int = 0
    sample_device: str = ""         # the device whose pages are timed
    pages: dict[str, dict[str, float]] = field(default_factory=dict)
    load_before: float = 0.0         # the machine's 1-minute load average, when the run started and ended
    load_after: float = 0.0

    @property
    def lost(self) -> int:
        return self.published - self.stored + self.drain_published - self.drain_stored


# --- a simulated device ------------------------------------------------------------------


class SimDevice:
    """One device's MQTT client and the agent's side of the protocol, minus the runtime."""

    def __init__(self, device_id: str, url: BrokerURL, trust: TrustStore, labels: dict[str, str]) -> None:
        self.device_id = device_id
        self.trust = trust
        self.labels = labels
        self.model: InstalledModel | None = None
        self.client = make_client(url, client_id=device_id)
        self.client.will_set(topics.state(device_id), self._state("offline").to_bytes(), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.online = False
        self.done: set[str] = set()
        self.failed: list[str] = []
        self.job: Deployment | None = None
        self.chunks: dict[int, bytes] = {}
        self.inflight: set[int] = set()   # every QoS 1 message the broker has not acknowledged yet
        self.telemetry: set[int] = set()  # those of them that are ingest-phase reports
        self.telemetry_acked = 0
        self.prepared: list[bytes] = []

    def _state(self, status: str) -> DeviceState:
        return DeviceState(device_id=self.device_id, status=status, profile=PROFILE,  # type: ignore[arg-type]
                           simulated=True, labels=self.labels, agent_version="sim",
                           runtimes={"onnxruntime": "sim"}, model=self.model)

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False, telemetry: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self.inflight.add(info.mid)
        if telemetry:
            self.telemetry.add(info.mid)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("%s: refused: %s", self.device_id, reason)
            return
        self._publish(topics.state(self.device_id), self._state("online").to_bytes(), retain=True)
        client.subscribe([(topics.device_deploy(self.device_id), 1)])
        self.online = True

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.inflight.discard(mid)
        if mid in self.telemetry:
            self.telemetry.discard(mid)
            self.telemetry_acked += 1

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        if "/packages/" in msg.topic:
            self._on_chunk(topics.chunk_index(msg.topic), bytes(msg.payload))
            return
        deployment = parse(Deployment, bytes(msg.payload), topic=msg.topic)
        if deployment.deployment_id in self.done or self.job is not None:
            return
        if deployment.profile != PROFILE:
            self._finish(deployment, f"package {deployment.package.id} is for {deployment.profile}")
            return
        self.job, self.chunks = deployment, {}
        self._event(Phase.DOWNLOADING)
        client.subscribe(topics.package_chunks(deployment.package.sha256), qos=1)

    def _on_chunk(self, index: int, data: bytes) -> None:
        job = self.job
        if job is None or index >= job.package.chunk_count():
            return
        if hashlib.sha256(data).hexdigest() == job.package.chunk_sha256[index]:
            self.chunks[index] = data
        if len(self.chunks) < job.package.chunk_count():
            return
        self.client.unsubscribe(topics.package_chunks(job.package.sha256))
        whole = b"".join(self.chunks[i] for i in range(job.package.chunk_count()))
        self.chunks = {}
        if hashlib.sha256(whole).hexdigest() != job.package.sha256:
            self._finish(job, "the package's SHA-256 does not match the deployment")
            return
        self._event(Phase.VERIFYING)
        try:
            manifest = verify_package(io.BytesIO(whole), self.trust)
        except EdgefleetError as exc:
            self._finish(job, str(exc))
            return
        self._event(Phase.INSTALLING)
        # Here the agent loads the model and checks its test vectors; a simulated device does not.
        self.model = InstalledModel(package_id=manifest.package_id, name=manifest.name, version=manifest.version,
                                    runtime=manifest.target.runtime, sha256=job.package.sha256,
                                    installed_at=time.time())
        self._event(Phase.BENCHMARKING)
        self._publish(topics.telemetry(self.device_id), self.report(time.time()).to_bytes())
        self._finish(job)

    def _event(self, phase: Phase, error: str = "") -> None:
        assert self.job is not None
        event = DeploymentEvent(device_id=self.device_id, deployment_id=self.job.deployment_id,
                                package_id=self.job.package.id, phase=phase, error=error)
        self._publish(topics.events(self.device_id), event.to_bytes())

    def _finish(self, job: Deployment, error: str = "") -> None:
        self.job = job
        self._event(Phase.FAILED if error else Phase.DONE, error)
        if error:
            self.failed.append(error)
        self.done.add(job.deployment_id)
        self.job = None
        self._publish(topics.state(self.device_id), self._state("online").to_bytes(), retain=True)

    def report(self, ts: float) -> BenchmarkReport:
        """A benchmark report of the installed model, with made-up figures (no runtime ran)."""
        m = self.model
        return BenchmarkReport(
            device_id=self.device_id, profile=PROFILE, simulated=True, package_id=m.package_id if m else "none",
            model_name=m.name if m else "none", model_version=m.version if m else "0", runtime="onnxruntime",
            runtime_version="sim", threads=4, warmup=10, runs=200, load_ms=3.0, first_inference_ms=1.2,
            latency_ms=LatencyStats(mean=1.0, std=0.05, min=0.9, p50=1.0, p90=1.1, p99=1.3, max=1.6),
            throughput_ips=1000.0, peak_rss_mb=60.0, cpu_percent=100.0,
            power=PowerReading(watts=4.2, source="estimate"), energy_mj=4.2, ts=ts,
        )

    def prepare_telemetry(self, count: int) -> None:
        """Serialise ``count`` reports now, so the timed ingest measures the fleet side, not this simulator."""
        base = time.time()
        template = self.report(base)
        # Distinct send times: the store keeps one report per (device, package, ts).
        self.prepared = [template.model_copy(update={"ts": base + i * 1e-3}).to_bytes() for i in range(count)]

    def send_telemetry(self) -> None:
        self.telemetry_acked = 0
        for payload in self.prepared:
            self._publish(topics.telemetry(self.device_id), payload, telemetry=True)
        self.prepared = []

    def clear_retained(self) -> None:
        self._publish(topics.state(self.device_id), b"", retain=True)
        self._publish(topics.device_deploy(self.device_id), b"", retain=True)


def _serve_devices(ids: Sequence[str], broker: str, trust_path: str, labels: dict[str, str], conn: Connection) -> None:
    """A worker process: run ``ids`` on one selectors loop and answer the parent's commands on ``conn``."""
    logging.basicConfig(level=logging.WARNING)
    url = BrokerURL.parse(broker)
    trust = TrustStore.from_paths([Path(trust_path)])
    devices = [SimDevice(d, url, trust, {**labels, "rack": str(i % 10)}) for i, d in enumerate(ids)]
    sel = selectors.DefaultSelector()
    for d in devices:
        d.client.connect(url.host, url.port, keepalive=120)
        sel.register(d.client.socket(), selectors.EVENT_READ, d)
    sel.register(conn, selectors.EVENT_READ, None)
    writing: set[SimDevice] = set()
    pending: tuple[str, Any] | None = None
    last_misc = time.monotonic()
    while True:
        for d in devices:  # paho queues what callbacks publish; ask it who has bytes to send
            want = d.client.want_write()
            if want != (d in writing):
                sock = d.client.socket()
                if sock is None:
                    continue
                sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), d)
                (writing.add if want else writing.discard)(d)
        for key, mask in sel.select(0.05):
            if key.data is None:
                pending = conn.recv()
                if pending[0] == "prepare":
                    for d in devices:
                        d.prepare_telemetry(pending[1])
                    conn.send(sum(len(d.prepared) for d in devices))
                    pending = None
                elif pending[0] == "telemetry":
                    for d in devices:
                        d.send_telemetry()
                elif pending[0] == "stop":
                    if pending[1]:
                        for d in devices:
                            d.clear_retained()
                    pending = ("drain", time.monotonic() + 10)
                continue
            d = key.data
            if mask & selectors.EVENT_READ:
                d.client.loop_read()
            if mask & selectors.EVENT_WRITE and d.client.socket() is not None:
                d.client.loop_write()
        if time.monotonic() - last_misc > 1:
            last_misc = time.monotonic()
            for d in devices:
                d.client.loop_misc()
        if pending is None:
            continue
        if pending[0] == "online" and all(d.online for d in devices):
            conn.send(len(devices))
            pending = None
        elif pending[0] == "telemetry" and not any(d.telemetry for d in devices):
            conn.send(sum(d.telemetry_acked for d in devices))
            pending = None
        elif pending[0] == "status":
            conn.send({"installed": sum(d.model is not None for d in devices),
                       "failed": sum(len(d.failed) for d in devices)})
            pending = None
        elif pending[0] == "drain" and (time.monotonic() > pending[1] or not any(d.inflight for d in devices)):
            for d in devices:
                d.client.disconnect()
                d.client.loop_write()
            conn.send("stopped")
            return


class SimulatedFleet:
    """``count`` simulated devices in ``processes`` worker processes; a context manager."""

    def __init__(self, broker: str, trust: Path, ids: Sequence[str], labels: dict[str, str], processes: int,
                 *, clear_retained: bool) -> None:
        self.ids = list(ids)
        self.clear = clear_retained
        ctx = mp.get_context("spawn")  # the parent runs threads (collector, pusher): do not fork them
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        share = max(1, -(-len(ids) // processes))
        for start in range(0, len(ids), share):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve_devices, args=(self.ids[start:start + share], broker, str(trust), labels,
                                                            child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def ask(self, *command: Any, timeout: float = 300) -> list[Any]:
        for conn in self.conns:
            conn.send(command)
        answers = []
        for conn, proc in zip(self.conns, self.procs, strict=True):
            try:
                if not conn.poll(timeout):
                    raise TimeoutError(f"simulated devices did not answer {command[0]!r} within {timeout:g}s")
                answers.append(conn.recv())
            except (EOFError, OSError):
                proc.join(1)
                raise RuntimeError(f"a worker process of simulated devices died (exit code {proc.exitcode}); "
                                   "its traceback is above") from None
        return answers

    def close(self) -> None:
        try:
            if all(proc.is_alive() for proc in self.procs):
                self.ask("stop", self.clear, timeout=30)
        finally:
            for proc in self.procs:
                proc.join(10)
                if proc.is_alive():
                    proc.terminate()

    def __enter__(self) -> SimulatedFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the pieces around it ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:g}s")


@contextmanager
def private_mosquitto(workdir: Path) -> Iterator[str]:
    """A Mosquitto with limits raised for a thousand clients and a telemetry burst; yields its URL."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{MOSQUITTO_LIMITS}")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def raise_open_files_limit() -> None:
    """A thousand MQTT connections need a few thousand descriptors here and in a Mosquitto we start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 16384:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(16384, hard), hard))


def make_bench_package(workdir: Path, version: str) -> tuple[Path, Path]:
    """A signed package of a ``MODEL_BYTES`` model file (never loaded) and the public key that verifies it."""
    private, public = keys.generate(workdir / "bench-signing.key")
    manifest = Manifest(
        name="fleet-bench", version=version, target=Target(profile=PROFILE, runtime="onnxruntime"),
        model_file="model.onnx", inputs=[TensorSpec(name="x", shape=[1, 4], dtype="float32")],
        outputs=[TensorSpec(name="y", shape=[1, 3], dtype="float32")], compression={"scheme": "fp32"},
    )
    path = workdir / f"fleet-bench-{version}.efpkg"
    write_package(path, manifest, {"model.onnx": os.urandom(MODEL_BYTES)}, keys.load_private(private))
    return path, public


def count_benchmarks(db: Path, prefix: str, since: float) -> int:
    """Rows stored for the bench's devices sent at or after ``since``, counted by SQLite itself."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT count(*) FROM benchmarks WHERE device_id LIKE ? AND ts >= ?",
                           (prefix + "%", since)).fetchone()
    return int(row[0])


def time_pages(base: str, paths: Sequence[str], requests: int) -> dict[str, dict[str, float]]:
    """p50 and p95 milliseconds of ``requests`` GETs of each path (after one untimed warm-up each)."""
    figures = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for path in paths:
            client.get(path).raise_for_status()
            times = []
            for _ in range(requests):
                start = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
            times.sort()
            figures[path] = {"p50_ms": statistics.median(times),
                             "p95_ms": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
                             "bytes": len(response.content)}
    return figures


@contextmanager
def dashboard_server(db: Path) -> Iterator[str]:
    """``edgefleet dashboard`` over ``db`` in its own process; yields its base URL."""
    port = _free_port()
    exe = Path(sys.executable).parent / "edgefleet"
    proc = subprocess.Popen([str(exe), "dashboard", "--db", str(db), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def extra_collectors(count: int, broker: str, db: Path, group: str, workdir: Path) -> Iterator[None]:
    """``count`` ``edgefleet collect --shared GROUP`` processes writing to ``db``, subscribed when this yields."""
    # `edgefleet collect`, with Ctrl-C's handler put back: a shell that starts us in the background ignores
    # SIGINT, and children inherit that, but SIGINT is how collect is told to store what it queued and stop.
    script = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
              "from edgefleet.deploy.cli import main; main()")
    argv = [sys.executable, "-c", script, "collect", "--shared", group, "--db", str(db),
            "--broker", broker, "--interval", "3600"]
    procs, logs = [], []
    try:
        for i in range(count):
            logs.append(workdir / f"collect-{i}.log")
            with open(logs[-1], "wb") as log_file:
                procs.append(subprocess.Popen(argv, stdout=log_file, stderr=log_file))
        _wait(lambda: all("subscribed to all devices" in p.read_text() for p in logs), 60, "the extra collectors")
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # the collector stores what it has queued, then exits
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                log.warning("a collector did not stop within 30 s of SIGINT; killed it")


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


# --- the run -----------------------------------------------------------------------------


def run_bench(config: BenchConfig, workdir: Path, *, progress: Any = None) -> BenchResult:
    """Everything above, in order; returns the figures (asserts nothing: the test and the printout judge)."""
    say = progress or (lambda line: None)
    raise_open_files_limit()
    with nullcontext(config.broker) if config.broker else private_mosquitto(workdir) as broker:
        return _run(config, workdir, broker, say)


def _run(config: BenchConfig, workdir: Path, broker: str, say: Any) -> BenchResult:
    url = BrokerURL.parse(broker)
    run = uuid.uuid4().hex[:6]
    prefix = f"sim-{run}-"
    ids = [f"{prefix}{i:04d}" for i in range(config.devices)]
    package, public = make_bench_package(workdir, "2")
    db = workdir / "fleet.db"
    result = BenchResult(devices=config.devices, broker="private mosquitto" if config.broker is None else broker,
                         load_before=os.getloadavg()[0])
    shared = f"bench-{run}" if config.collectors > 1 else None
    with TelemetryStore(db) as store:
        collector = Collector(url, store, shared_group=shared).start(timeout=10)
        try:
            with SimulatedFleet(broker, public, ids, {"bench": run}, config.processes,
                                clear_retained=config.broker is not None) as fleet:
                started = time.monotonic()
                fleet.ask("online", timeout=120)
                _wait(lambda: sum(d.device_id.startswith(prefix) for d in store.devices()) == config.devices, 60,
                      "every device's state in the store")
                say(f"{config.devices} devices online in {time.monotonic() - started:.1f}s")
                _rollout(store, url, package, run, prefix, config, result)
                say(f"rollout {result.rollout_status} in {result.rollout_seconds:.1f}s")
                result.devices_failed = sum(s["failed"] for s in fleet.ask("status"))

                with extra_collectors(config.collectors - 1, broker, db, shared or "", workdir):
                    live = _ingest(fleet, db, prefix, config.telemetry)
                result.published, result.stored, result.publish_seconds, result.ingest_seconds = live
                result.ingest_rate = result.stored / result.ingest_seconds
                result.rejected, result.store_errors = collector.stats.rejected, collector.stats.store_errors
                say(f"live ingest: {result.stored}/{result.published} stored at {result.ingest_rate:.0f} msg/s")
                collector.stop()

                # The collector alone: one with a persistent session is away while the devices publish (the
                # broker queues for it), then drains the backlog, so the simulator's speed is out of the figure.
                backlog = Collector(url, store, client_id=f"fleet-scale-{run}")
                backlog.start(timeout=10).stop()
                try:
                    drain = _ingest(fleet, db, prefix, config.telemetry, reconnect=backlog)
                finally:
                    backlog.stop()
                    _end_session(url, f"fleet-scale-{run}")
                result.drain_published, result.drain_stored, _, result.drain_seconds = drain
                result.drain_rate = result.drain_stored / result.drain_seconds
                say(f"backlog: {result.drain_stored}/{result.drain_published} stored at {result.drain_rate:.0f} msg/s")
                result.parse_rate, result.write_rate = store_only_rate(workdir)

                if config.dashboard:
                    result.sample_device = device = ids[len(ids) // 2]
                    with dashboard_server(db) as base:
                        paths = ["/devices", "/devices.json", f"/devices/{device}", f"/devices/{device}.json",
                                 f"/rollouts/{result.rollout_id}", f"/rollouts/{result.rollout_id}.json"]
                        result.pages = time_pages(base, paths, config.requests)
        finally:
            collector.stop()
            if config.broker is not None:  # someone else's broker: take our retained package chunks away too
                clear_package(url, describe_package(package)[1])
    result.load_after = os.getloadavg()[0]
    return result


def _rollout(store: TelemetryStore, url: BrokerURL, package: Path, run: str, prefix: str, config: BenchConfig,
             result: BenchResult) -> None:
    """The real planner and runner, targeting the bench's devices by label; fills the rollout's figures."""
    strategy = Strategy(canary=config.canary, waves=config.waves, device_timeout=config.device_timeout)
    state, _ = plan_rollout(store, [package], RolloutTarget(labels={"bench": run}), strategy=strategy,
                            gates=Gates(max_failure_rate=0.0))
    started = time.monotonic()
    with MqttPusher(url) as pusher:
        final = RolloutRunner(store, state.rollout_id, pusher, poll=0.5, on_note=lambda n: None).run()
    result.rollout_seconds = time.monotonic() - started
    result.rollout_id = state.rollout_id
    result.rollout_status = final.status.value
    result.waves = [{"wave": w.label, "devices": len(final.wave_devices(w.index)), "status": w.status.value,
                     "seconds": round((w.finished_at or 0) - (w.started_at or 0), 2)} for w in final.waves]
    result.devices_done = sum(d.phase.value == "done" for d in final.devices.values())
    new = final.plan.packages[0].package_id
    _wait(lambda: sum(d.package_id == new for d in store.devices() if d.device_id.startswith(prefix)) == config.devices,
          30, "every device's new state")
    result.devices_running_new = config.devices


def _ingest(fleet: SimulatedFleet, db: Path, prefix: str, per_device: int,
            reconnect: Collector | None = None) -> tuple[int, int, float, float]:
    """Devices publish ``per_device`` reports each; returns (published, stored, publish seconds, ingest seconds).

    With ``reconnect``, that collector is started once the broker has acknowledged every report,
    and the ingest time runs from then. Stored is counted by SQLite itself, whichever collector wrote it.
    """
    since = time.time()  # after every earlier report, before every one of these
    fleet.ask("prepare", per_device, timeout=300)
    started = time.monotonic()
    published = sum(fleet.ask("telemetry", timeout=600))
    publish_seconds = time.monotonic() - started
    if reconnect is not None:
        started = time.monotonic()
        reconnect.start(timeout=30)
    last, last_at = -1, time.monotonic()
    while last < published and time.monotonic() - last_at < 10:
        stored = count_benchmarks(db, prefix, since)
        if stored != last:
            last, last_at = stored, time.monotonic()
        time.sleep(0.05)
    # To the last message stored, not the idle wait after.
    return published, count_benchmarks(db, prefix, since), publish_seconds, max(last_at - started, 1e-3)


def store_only_rate(workdir: Path, count: int = 10_000) -> tuple[float, float]:
    """What a collector does per message minus MQTT: (validations per second, rows stored per second).

    ``count`` report payloads are validated as the collector does (``parse``), then written to a
    fresh SQLite file in transactions of ``BATCH_MAX`` (``record_many``), each step timed alone.
    """
    device = SimDevice.__new__(SimDevice)  # only for its report(): no client, no connection
    device.device_id, device.model = "store-bench", InstalledModel(
        package_id=f"fleet-bench@2:{PROFILE}", name="fleet-bench", version="2", runtime="onnxruntime",
        sha256="0" * 64, installed_at=0.0)
    template = device.report(1.0)
    payloads = [template.model_copy(update={"ts": 1.0 + i * 1e-3}).to_bytes() for i in range(count)]
    started = time.perf_counter()
    reports = [parse(TELEMETRY, p) for p in payloads]
    parsed = time.perf_counter() - started
    with TelemetryStore(workdir / "store-only.db") as store:
        started = time.perf_counter()
        for i in range(0, count, BATCH_MAX):
            store.record_many(reports[i:i + BATCH_MAX])
        written = time.perf_counter() - started
    return count / parsed, count / written


def _end_session(url: BrokerURL, client_id: str) -> None:
    """Have the broker forget a persistent session: connect once with a clean one under the same id."""
    client = make_client(url, client_id, clean_start=True)
    client.connect(url.host, url.port)
    client.loop_start()
    client.disconnect()
    client.loop_stop()


def render(result: BenchResult, config: BenchConfig) -> str:
    """The figures as a Markdown table, headed by the conditions they were measured in."""
    rollout = (f"{result.rollout_status}: {result.devices_done}/{result.devices} done in "
               f"{result.rollout_seconds:.1f} s")
    stored = f"{result.stored} (rejected {result.rejected}, store errors {result.store_errors})"
    lines = [
        (f"Fleet at scale: {result.devices} simulated devices, {result.broker}, {config.processes} device "
         f"processes, {config.collectors} collector(s); {platform.machine()}, {os.cpu_count()} CPUs, load average "
         f"{result.load_before:.1f} before and {result.load_after:.1f} after, Python {platform.python_version()}"),
        "",
        "| Step | Figure |",
        "|---|---|",
        f"| Rollout ({', '.join(w['wave'] for w in result.waves)}) | {rollout} |",
    ]
    lost = f"| Telemetry lost, both phases | {result.lost} |"
    lines += [f"| wave {w['wave']} | {w['devices']} devices, {w['status']}, {w['seconds']:.1f} s |" for w in result.waves]
    lines += [
        (f"| Live ingest: published (QoS 1, acknowledged) / stored in SQLite | {result.published} / {stored}; the "
         f"devices took {result.publish_seconds:.1f} s to publish |"),
        (f"| Live ingest rate, {config.collectors} collector(s) | {result.ingest_rate:.0f} msg/s over "
         f"{result.ingest_seconds:.1f} s, first publish to last row |"),
        (f"| Backlog drained by one collector: published / stored | {result.drain_published} / "
         f"{result.drain_stored} |"),
        f"| Backlog ingest rate, one collector | {result.drain_rate:.0f} msg/s over {result.drain_seconds:.1f} s |",
        (f"| The same work without MQTT, one thread | validating {result.parse_rate:.0f} reports/s; storing "
         f"{result.write_rate:.0f} rows/s in SQLite, {BATCH_MAX} per transaction |"),
        lost,
    ]
    lines += [f"| GET {path} | p50 {f['p50_ms']:.0f} ms, p95 {f['p95_ms']:.0f} ms ({f['bytes'] / 1024:.0f} KiB) |"
              for path, f in result.pages.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=BenchConfig.devices, help="Simulated devices.")
    parser.add_argument("--processes", type=int, default=BenchConfig.processes, help="Worker processes for them.")
    parser.add_argument("--telemetry", type=int, default=BenchConfig.telemetry, help="Reports per device to ingest.")
    parser.add_argument("--canary", type=int, default=BenchConfig.canary, help="Canary devices.")
    parser.add_argument("--waves", default="10,50,100", help="Cumulative wave percentages.")
    parser.add_argument("--requests", type=int, default=BenchConfig.requests, help="Timed GETs per dashboard page.")
    parser.add_argument("--collectors", type=int, default=BenchConfig.collectors,
                        help="Collectors sharing the subscription (one in this process, the rest `edgefleet collect`).")
    parser.add_argument("--broker", default=None, help="Use this broker instead of a private Mosquitto.")
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = BenchConfig(devices=args.devices, processes=args.processes, telemetry=args.telemetry, canary=args.canary,
                         waves=tuple(float(w) for w in args.waves.split(",")), requests=args.requests,
                         broker=args.broker, collectors=args.collectors)
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        result = run_bench(config, Path(tmp), progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({**asdict(result), "lost": result.lost}, indent=2))
    else:
        print(render(result, config))
    ok = result.rollout_status == "completed" and result.lost == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
