"""The device agent: receive deployments over MQTT, install them safely, benchmark, report.

One ``Agent`` object per process, configured entirely through its constructor. A network
thread runs paho-mqtt's loop and reconnects with capped exponential backoff and jitter
(``reconnect.py``), catching only the connection errors it can recover from; deployments are
queued and handled one at a time on the thread that called ``run``, so two deployments never
race for the ``current`` model. Bad input (a malformed message, a package with a bad signature
or hash, a model that fails its test vectors) is refused and reported; the agent keeps running
and keeps serving the model it had.
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from edgefleet.agent import runtimes, topics
from edgefleet.agent.benchmark import BenchmarkSettings, DeviceProbe, measure
from edgefleet.agent.errors import (
    BenchmarkError,
    IntegrityError,
    MessageError,
    PackageError,
    RuntimeLoadError,
    SignatureError,
    TransportError,
)
from edgefleet.agent.faults import crash_point
from edgefleet.agent.history import HistoryFile, Trial
from edgefleet.agent.http_fetch import fetch_http
from edgefleet.agent.install import InstalledPackage, ModelStore
from edgefleet.agent.keys import TrustStore
from edgefleet.agent.labels import check_labels
from edgefleet.agent.messages import (
    BenchmarkReport,
    BenchmarkRequest,
    Deployment,
    DeploymentEvent,
    DeviceState,
    InstalledModel,
    KeyRevocation,
    PackageRef,
    Phase,
    parse,
)
from edgefleet.agent.outbox import Outbox
from edgefleet.agent.package import (
    Manifest,
    compare_versions,
    load_test_vectors,
    verify_package,
)
from edgefleet.agent.power import ProfileEstimate, find_power_source
from edgefleet.agent.reconnect import RECOVERABLE_CONNECT_ERRORS, Backoff
from edgefleet.agent.runtimes import LoadedModel
from edgefleet.agent.system import Counters, SystemMonitor
from edgefleet.agent.transfer import ChunkedDownload
from edgefleet.agent.transport import (
    BrokerURL,
    closed_before_connack,
    describe_connect_error,
    make_client,
)
from edgefleet.hardware_profiles import HardwareProfile

if TYPE_CHECKING:
    # numpy is imported where arrays are handled (test vectors, benchmark inputs), not at start-up:
    # it is ~15 MB of RSS that an idle agent with no model loaded does not need.
    import numpy as np

_OUTBOX_WINDOW = 32  # reports in flight at once: enough to keep a link busy, few to resend after a drop


def agent_version() -> str:
    try:
        return version("edgefleet")
    except PackageNotFoundError:
        return "unknown"


class Agent:
    def __init__(
        self,
        *,
        broker: BrokerURL,
        device_id: str,
        profile: HardwareProfile,
        data_dir: Path,
        trust: TrustStore,
        groups: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        simulated: bool = False,
        benchmark: BenchmarkSettings | None = None,
        sysfs: Path = Path("/sys"),
        vcgencmd: str = "vcgencmd",
        stall_timeout: float = 120.0,
        max_crashes: int = 3,
        outbox_max_messages: int = 10_000,
        system_interval: float = 60.0,
        keep_versions: int = 2,
        logger: logging.Logger | None = None,
    ) -> None:
        self.device_id = topics.check_id(device_id)
        self.groups = [topics.check_id(g, "group") for g in groups]
        self.labels = check_labels(labels or {})
        if len(trust) == 0:
            raise ValueError("the agent trusts no signing key, so it would refuse every package; pass --trust KEY.pub")
        if stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")
        if max_crashes < 1:
            raise ValueError("max_crashes must be at least 1")
        self.max_crashes = max_crashes
        if system_interval < 0:
            raise ValueError("system_interval must be 0 (no system samples) or a number of seconds")
        self.system_interval = system_interval
        if keep_versions < 0:
            raise ValueError("keep_versions must be 0 (keep only the serving model) or more")
        self.broker = broker
        self.profile = profile
        self.trust = trust
        self.simulated = simulated
        self.settings = benchmark or BenchmarkSettings()
        self.stall_timeout = stall_timeout
        self.log = logger or logging.getLogger(f"edgefleet.agent.{device_id}")
        self.data_dir = Path(data_dir)
        # The serving model plus `keep_versions` previous ones stay on disk, for crash rollback.
        self.store = ModelStore(self.data_dir, keep=keep_versions + 1)
        # Revocations heard over MQTT are kept here; none is ever taken back (agent/keys.py).
        self.trust.keep_revocations(self.data_dir / "revoked-keys")
        self.outbox = Outbox(self.data_dir / "outbox.sqlite", max_messages=outbox_max_messages)
        self._in_flight: dict[int, int] = {}  # paho message id -> outbox id, until the broker acknowledges
        self._last_sent = 0  # the newest outbox id handed to paho on this connection
        self.counters = Counters()
        self._monitor = SystemMonitor(device_id=self.device_id, profile=profile.name, simulated=simulated,
                                      data_dir=self.data_dir, sysfs=Path(sysfs))
        self._next_sample = time.monotonic()
        self.power = find_power_source(profile, sysfs=sysfs, vcgencmd=vcgencmd, simulated=simulated, logger=self.log)
        # A simulated device reports no temperatures: the host's say nothing about the board it pretends to be.
        self.probe = None if simulated else DeviceProbe(sysfs=Path(sysfs), vcgencmd=vcgencmd)
        self.history = HistoryFile(self.data_dir / "agent-state.json")
        self._jobs: queue.Queue[Deployment | BenchmarkRequest] = queue.Queue()  # handled one at a time
        self.candidates = ModelStore(self.data_dir / "candidates", keep=1)
        self._download: ChunkedDownload | None = None
        self._download_failure: OSError | None = None  # set by the network thread when a chunk cannot be written
        self._chunk_arrived = threading.Event()
        self._stop = threading.Event()
        self._model: LoadedModel | None = None
        self._client = make_client(broker, client_id=f"edgefleet-agent-{device_id}")
        self._client.will_set(topics.state(device_id), self._state("offline").to_bytes(), qos=1, retain=True)
        self._backoff = Backoff(min_delay=1.0, max_delay=60.0)
        self._network_stop = threading.Event()
        self._answered = False  # the broker sent a CONNACK (accepting or refusing) on the current connection
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish

    # --- lifecycle -----------------------------------------------------------------------

    def run(self) -> None:
        """Serve until ``stop()`` is called; returns after announcing the device offline."""
        self.store.clean_up()
        self._roll_back_after_crashes()
        self.log.info("agent %s (%s%s) connecting to %s", self.device_id, self.profile.name,
                      ", simulated" if self.simulated else "", self.broker)
        network = threading.Thread(target=self._network, name=f"mqtt-{self.device_id}", daemon=True)
        network.start()
        try:
            while not self._stop.is_set():
                self._maybe_sample()
                try:
                    job = self._jobs.get(timeout=0.5)
                except queue.Empty:
                    continue
                if isinstance(job, BenchmarkRequest):
                    self._handle_request(job)
                else:
                    self._handle(job)
        finally:
            # Give queued reports a moment to leave; what does not stays on disk for the next start.
            deadline = time.monotonic() + 3
            while len(self.outbox) and self._client.is_connected() and time.monotonic() < deadline:
                time.sleep(0.05)
            info = self._client.publish(topics.state(self.device_id), self._state("offline").to_bytes(), qos=1, retain=True)
            if self._client.is_connected():
                info.wait_for_publish(timeout=5)
            self._client.disconnect()
            self._network_stop.set()
            network.join(timeout=10)
            self.outbox.close()

    def stop(self) -> None:
        self._stop.set()

    def _network(self) -> None:
        """The network thread: connect, run paho's loop while connected, retry with jittered backoff.

        Runs until ``run`` has announced the device offline and disconnected (``_network_stop``);
        after ``stop()`` it keeps the connection serviced so that announcement is delivered, but
        does not reconnect.
        """
        while not self._network_stop.is_set() and not self._stop.is_set():
            try:
                self._client.connect(self.broker.host, self.broker.port, keepalive=30)
            except RECOVERABLE_CONNECT_ERRORS as exc:
                delay = self._backoff.next()
                self.log.warning("%s; retrying in %.1f s", describe_connect_error(exc, self.broker), delay)
                self._network_stop.wait(delay)
                continue
            rc = mqtt.MQTT_ERR_SUCCESS
            self._answered = False
            while rc == mqtt.MQTT_ERR_SUCCESS and not self._network_stop.is_set():
                self._send_outbox()
                rc = self._client.loop(timeout=0.2)
            if self._stop.is_set() or self._network_stop.is_set():
                return
            delay = self._backoff.next()
            if not self._answered:  # hung up before its CONNACK: under TLS, usually our certificate refused
                self.log.warning("%s; retrying in %.1f s", closed_before_connack(self.broker), delay)
            else:
                self.log.warning("lost the connection to %s (%s); reconnecting in %.1f s", self.broker,
                                 mqtt.error_string(rc), delay)
            self._network_stop.wait(delay)

    def _send_outbox(self) -> None:
        """Hand paho the oldest queued reports, keeping at most ``_OUTBOX_WINDOW`` unacknowledged."""
        if not self._client.is_connected():
            return
        room = _OUTBOX_WINDOW - len(self._in_flight)
        if room <= 0:
            return
        for message in self.outbox.oldest(room, after=self._last_sent):
            info = self._client.publish(message.topic, message.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # the connection went; everything not acknowledged goes again after reconnecting
            self._in_flight[info.mid] = message.id
            self._last_sent = message.id

    # --- MQTT callbacks (paho's network thread) -----------------------------------------

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: object, props: object) -> None:
        outbox_id = self._in_flight.pop(mid, None)
        if outbox_id is not None:
            self.outbox.acknowledge(outbox_id)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        self._answered = True
        if getattr(reason, "is_failure", False):
            self.log.error("broker %s refused the connection: %s", self.broker, reason)
            return
        self.log.info("connected to %s", self.broker)
        self._backoff.reset()
        client.publish(topics.state(self.device_id), self._state("online").to_bytes(), qos=1, retain=True)
        # What was sent but not acknowledged on the last connection goes again, in order.
        self._in_flight.clear()
        self._last_sent = 0
        subscriptions = [(topics.device_deploy(self.device_id), 1), (topics.benchmark_requests(self.device_id), 1)]
        subscriptions += [(topics.group_deploy(g, self.profile.name), 1) for g in self.groups]
        subscriptions.append((topics.ALL_REVOCATIONS, 1))
        if self._download is not None:  # resume a transfer the disconnect interrupted
            subscriptions.append((topics.package_chunks(self._download.ref.sha256), 1))
        client.subscribe(subscriptions)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if not self._stop.is_set():
            # The network thread logs what happens next (reconnect, with its delay).
            self.log.debug("disconnected from %s (%s)", self.broker, reason)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return  # a retained message being cleared
        try:
            if "/packages/" in msg.topic:
                self._on_chunk(msg.topic, msg.payload)
            elif msg.topic.endswith("/deploy"):
                self._jobs.put(parse(Deployment, msg.payload, topic=msg.topic))
            elif msg.topic == topics.benchmark_requests(self.device_id):
                self._jobs.put(parse(BenchmarkRequest, msg.payload, topic=msg.topic))
            elif msg.topic.startswith(topics.key_revocation("")):
                self._on_revocation(parse(KeyRevocation, msg.payload, topic=msg.topic), msg.topic)
            else:
                self.log.warning("ignoring a message on unexpected topic %s", msg.topic)
        except (MessageError, IntegrityError, ValueError) as exc:
            self.log.warning("ignored: %s", exc)
        except (SignatureError, OSError) as exc:
            self.log.error("key revocation on %s refused: %s", msg.topic, exc)

    def _on_revocation(self, revocation: KeyRevocation, topic: str) -> None:
        """Revoke a key if a trusted, unrevoked key signed the revocation; the network thread calls this."""
        if topic != topics.key_revocation(revocation.key_id):
            raise MessageError(f"revocation of key {revocation.key_id} on another key's topic", topic=topic)
        if self.trust.is_revoked(revocation.key_id):
            return  # retained: heard again at every connection
        self.trust.verify_statement(revocation.signer, revocation.signature, revocation.statement(),
                                    what=f"revocation of key {revocation.key_id}")
        if self.trust.revoke(revocation.key_id):
            self.log.warning("signing key %s revoked by key %s%s: packages it signed are refused from now on",
                             revocation.key_id, revocation.signer, f" ({revocation.reason})" if revocation.reason else "")

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        download = self._download
        if download is None or f"/{download.ref.sha256}/" not in topic:
            return
        try:
            taken = download.accept(topics.chunk_index(topic), payload)
        except OSError as exc:
            # The disk is full (or failing). Raising here would end paho's loop and with it the network
            # thread, so the run thread is woken instead and abandons the download with a clear error.
            self._download_failure = exc
            taken = True
        if taken:
            self._chunk_arrived.set()

    # --- deployments (the run thread) ----------------------------------------------------

    def _handle(self, deployment: Deployment) -> None:
        history = self.history.load()
        if deployment.deployment_id in history.done:
            return
        if deployment.issued_at < history.issued_at:
            self.log.info("deployment %s is older than the last one applied: ignored", deployment.deployment_id)
            return
        ref = deployment.package
        current = self._current()
        applied = False
        try:
            if deployment.profile != self.profile.name:
                raise PackageError(f"package {ref.id} was compiled for {deployment.profile}, "
                                   f"this device is {self.profile.name}: push the package built for its profile")
            if current is not None and current.sha256 == ref.sha256:
                self.log.info("package %s is already installed", ref.id)
            else:
                self._install(deployment, current)
            self._event(deployment, Phase.BENCHMARKING)
            self._benchmark_current()
            self._event(deployment, Phase.DONE)
            self.counters.deployments_done += 1
            applied = True
        except (PackageError, RuntimeLoadError, BenchmarkError, TransportError) as exc:
            self.log.error("deployment %s of %s failed: %s", deployment.deployment_id, ref.id, exc)
            self._event(deployment, Phase.FAILED, error=str(exc))
            self.counters.deployments_failed += 1
        finally:
            # Whatever the outcome, the new model did not crash the agent: its trial is over. Only an
            # applied deployment sets the floor for later ones: one that failed changed nothing, and a
            # bogus one with a far-future issued_at must not lock out every real deployment after it.
            self.history.end_trial()
            self.history.finish(deployment.deployment_id, deployment.issued_at if applied else None)
            self._publish_state()

    def _handle_request(self, request: BenchmarkRequest) -> None:
        """Benchmark a package on demand, beside the serving model, and remove it afterwards."""
        ref = request.package
        try:
            if request.profile != self.profile.name:
                raise PackageError(f"package {ref.id} was compiled for {request.profile}, this device is {self.profile.name}")
            self._event(request, Phase.DOWNLOADING)
            candidate = self._fetch_and_stage(request, self.candidates)
            try:
                settings = replace(self.settings, **{k: v for k, v in (("warmup", request.warmup), ("runs", request.runs),
                                                                        ("threads", request.threads)) if v is not None})
                model = runtimes.load(candidate.model_path, candidate.manifest.target.runtime, threads=settings.threads)
                self._check_test_vectors(candidate, model)
                self._event(request, Phase.BENCHMARKING)
                self._benchmark(candidate, settings, request_id=request.request_id)
            finally:
                self.candidates.discard(candidate)
            self._event(request, Phase.DONE)
        except (PackageError, RuntimeLoadError, BenchmarkError, TransportError, ValueError) as exc:
            self.log.error("benchmark request %s for %s failed: %s", request.request_id, ref.id, exc)
            self._event(request, Phase.FAILED, error=str(exc))

    def _fetch_and_stage(self, job: Deployment | BenchmarkRequest, store: ModelStore) -> InstalledPackage:
        """Download, verify and unpack a package into ``store`` (not yet serving)."""
        package_path = self._fetch(job.package)
        try:
            self._event(job, Phase.VERIFYING)
            manifest = verify_package(package_path, self.trust)
            crash_point("verified")
            if manifest.target.profile != self.profile.name:
                raise PackageError(f"package {manifest.package_id} was compiled for {manifest.target.profile}, "
                                   f"this device is {self.profile.name}: push the package built for its profile")
            if isinstance(job, Deployment):
                self._check_version(job, manifest)
            self._event(job, Phase.INSTALLING)
            try:
                return store.stage(package_path, manifest, job.package.sha256)
            except OSError as exc:  # stage() has removed its partial copy
                what = "disk full" if exc.errno == errno.ENOSPC else "cannot unpack"
                raise PackageError(f"{what}: package {manifest.package_id} could not be unpacked into {store.packages} "
                                   f"({exc.strerror or exc}); the serving model is unchanged; free some space on the "
                                   "device and push again") from None
        finally:
            package_path.unlink(missing_ok=True)

    def _install(self, deployment: Deployment, previous: InstalledPackage | None) -> None:
        ref = deployment.package
        self._event(deployment, Phase.DOWNLOADING)
        staged = self._fetch_and_stage(deployment, self.store)
        manifest = staged.manifest
        try:
            model = runtimes.load(staged.model_path, manifest.target.runtime, threads=self.settings.threads)
            self._check_test_vectors(staged, model)
        except (RuntimeLoadError, PackageError):
            self.store.discard(staged)
            raise
        self.store.record_version(manifest, rollback=deployment.rollback is not None)
        self.store.activate(staged)
        self.history.start_trial(Trial(deployment_id=deployment.deployment_id, package_id=deployment.package.id,
                                       sha256=ref.sha256, previous=previous.directory.name if previous else None))
        self._model = model
        self.log.info("installed %s (was %s)", manifest.package_id, previous.manifest.package_id if previous else "nothing")

    def _check_version(self, deployment: Deployment, manifest: Manifest) -> None:
        """Anti-rollback: refuse a version older than the newest installed, unless a signed rollback allows it."""
        floor = self.store.version_floor(manifest.name)
        if floor is None or compare_versions(manifest.version, floor) >= 0:
            return
        grant = deployment.rollback
        if grant is None:
            raise PackageError(f"package {manifest.package_id} is version {manifest.version}, older than version {floor} "
                               f"of {manifest.name} installed before: refused (anti-rollback); to go back on purpose, "
                               "push it with `edgefleet push --rollback --key SIGNING.key`")
        bound = {"deployment_id": deployment.deployment_id, "issued_at": deployment.issued_at,
                 "package_id": manifest.package_id, "sha256": deployment.package.sha256, "version": manifest.version}
        wrong = [k for k, v in bound.items() if getattr(grant, k) != v]
        if grant.device is not None and grant.device != self.device_id:
            wrong.append("device")
        if grant.device is None and grant.group not in self.groups:
            wrong.append("group")
        if wrong:
            raise SignatureError(f"the rollback permission of deployment {deployment.deployment_id} does not match it "
                                 f"({', '.join(wrong)}): refused")
        self.trust.verify_statement(grant.signer, grant.signature, grant.statement(),
                                    what=f"rollback permission of deployment {deployment.deployment_id}")
        self.log.warning("rolling %s back from version %s to %s, as a rollback signed by key %s allows",
                         manifest.name, floor, manifest.version, grant.signer)

    def _fetch(self, ref: PackageRef) -> Path:
        download = None
        try:
            download = ChunkedDownload(self.data_dir / "downloads", ref)
            missing = ref.size - len(download.have) * ref.chunk_size
            free = shutil.disk_usage(download.part.parent).free
            if free < missing:
                download.discard()
                raise PackageError(f"disk full: package {ref.id} needs {missing} more bytes and {download.part.parent} "
                                   f"has {free} free; free some space on the device and push again")
            return self._download_chunks(download)
        except OSError as exc:
            if download is not None:
                download.discard()
            what = "disk full" if exc.errno == errno.ENOSPC else "cannot write the download"
            raise PackageError(f"{what}: package {ref.id} could not be stored in {self.data_dir / 'downloads'} "
                               f"({exc.strerror or exc}); the partial download was removed, the serving model is "
                               "unchanged; free some space on the device and push again") from None

    def _download_chunks(self, download: ChunkedDownload) -> Path:
        ref = download.ref
        if download.have:
            self.log.info("resuming the download of %s: %d of %d chunks are already here",
                          ref.id, len(download.have), ref.chunk_count())
        if not download.complete and ref.url is not None:
            self.log.info("downloading %s from %s", ref.id, ref.url)
            fetch_http(download, ref.url, stall_timeout=self.stall_timeout, stop=self._stop, logger=self.log)
        if not download.complete:
            self._download = download
            self._download_failure = None
            self._chunk_arrived.clear()
            topic = topics.package_chunks(ref.sha256)
            self._client.subscribe(topic, qos=1)
            try:
                while not download.complete:
                    if self._stop.is_set():
                        raise TransportError("the agent is stopping; the download resumes at the next start")
                    if not self._chunk_arrived.wait(self.stall_timeout):
                        raise TransportError(
                            f"no chunk of package {ref.id} arrived for {self.stall_timeout:.0f} s "
                            f"({download.progress:.0%} received); push it again with `edgefleet push`")
                    self._chunk_arrived.clear()
                    if self._download_failure is not None:
                        raise self._download_failure
            finally:
                self._client.unsubscribe(topic)
                self._download = None
        return download.finish()

    def _check_test_vectors(self, installed: InstalledPackage, model: LoadedModel) -> None:
        spec = installed.manifest.test_vectors
        if spec is None:
            return
        import numpy as np  # lazily: see the TYPE_CHECKING import above

        inputs, expected = load_test_vectors((installed.directory / spec.file).read_bytes())
        for i, (feed, want) in enumerate(zip(inputs, expected, strict=True)):
            try:
                got = model.run(feed)
                self.counters.inferences += 1
            except (RuntimeError, ValueError, KeyError) as exc:
                raise RuntimeLoadError(f"the model fails on test vector {i}: {exc}") from None
            for k, (g, w) in enumerate(zip(got, want, strict=True)):
                if g.shape != w.shape or not np.allclose(g, w, rtol=spec.rtol, atol=spec.atol):
                    err = float(np.max(np.abs(g.astype(np.float64) - w))) if g.shape == w.shape else float("inf")
                    raise PackageError(f"test vector {i}, output {k}: max error {err:.3g} exceeds "
                                       f"rtol={spec.rtol} atol={spec.atol}; the model does not run correctly here")

    def _benchmark_current(self) -> None:
        installed = self._current()
        if installed is None:
            raise BenchmarkError("no model is installed")
        self._model = self._benchmark(installed, self.settings)

    def _benchmark(self, installed: InstalledPackage, settings: BenchmarkSettings,
                   request_id: str | None = None) -> LoadedModel:
        """Load ``installed`` afresh (the load time is part of the report), measure it, queue the report."""
        manifest = installed.manifest
        feeds = self._benchmark_inputs(installed)
        t0 = time.perf_counter()
        model = runtimes.load(installed.model_path, manifest.target.runtime, threads=settings.threads)
        load_ms = (time.perf_counter() - t0) * 1e3
        crash_point("benchmarking")
        m = measure(model, feeds, settings, self.power, self.profile.cpu.cores,
                    fallback=ProfileEstimate(self.profile), probe=self.probe, logger=self.log)
        report = BenchmarkReport(
            device_id=self.device_id, profile=self.profile.name, simulated=self.simulated,
            package_id=manifest.package_id, model_name=manifest.name, model_version=manifest.version,
            runtime=model.runtime, runtime_version=model.version, threads=model.threads,
            warmup=settings.warmup, runs=m.runs, request_id=request_id, load_ms=load_ms,
            first_inference_ms=m.first_inference_ms,
            latency_ms=m.latency, throughput_ips=m.throughput_ips, peak_rss_mb=m.peak_rss_mb,
            cpu_percent=m.cpu_percent, power=m.power, energy_mj=m.energy_mj,
            energy_above_idle_mj=m.energy_above_idle_mj, temperature_before_c=m.temperature_before_c,
            temperature_after_c=m.temperature_after_c, throttled=m.throttled, governor=m.governor,
            delegate=model.delegate,
        )
        self.counters.inferences += 1 + settings.warmup + m.runs
        self.counters.benchmarks += 1
        self._report(topics.telemetry(self.device_id), report.to_bytes())
        self.log.info("benchmark of %s: p50 %.3f ms, p99 %.3f ms, %.0f inf/s, %.2f W (%s)", manifest.package_id,
                      m.latency.p50, m.latency.p99, m.throughput_ips, m.power.watts, m.power.source)
        return model

    def _benchmark_inputs(self, installed: InstalledPackage) -> dict[str, np.ndarray]:
        spec = installed.manifest.test_vectors
        if spec is not None:
            inputs, _ = load_test_vectors((installed.directory / spec.file).read_bytes())
            return inputs[0]
        import numpy as np  # lazily: see the TYPE_CHECKING import above

        rng = np.random.default_rng(0)
        return {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in installed.manifest.inputs}

    # --- state ---------------------------------------------------------------------------

    def _current(self) -> InstalledPackage | None:
        try:
            return self.store.current()
        except PackageError as exc:
            self.log.error("the installed model is unreadable: %s", exc)
            return None

    def _state(self, status: str) -> DeviceState:
        current = self._current()
        model = None
        if current is not None:
            m = current.manifest
            model = InstalledModel(package_id=m.package_id, name=m.name, version=m.version, runtime=m.target.runtime,
                                   sha256=current.sha256, installed_at=current.directory.stat().st_mtime)
        return DeviceState(device_id=self.device_id, status=status, profile=self.profile.name,  # type: ignore[arg-type]
                           simulated=self.simulated, groups=self.groups, labels=self.labels,
                           agent_version=agent_version(),
                           runtimes=runtimes.available(), model=model)

    def _maybe_sample(self) -> None:
        """Queue a SystemSample when one is due; the outbox keeps it while the broker is unreachable."""
        if self.system_interval <= 0 or time.monotonic() < self._next_sample:
            return
        self._next_sample = time.monotonic() + self.system_interval
        current = self._current()
        try:
            sample = self._monitor.sample(self.counters, package_id=current.manifest.package_id if current else None,
                                          version=current.manifest.version if current else None)
        except OSError as exc:  # e.g. the data directory's filesystem went away
            self.log.warning("no system sample: %s", exc)
            return
        sample = sample.model_copy(update={"outbox_pending": len(self.outbox), "outbox_dropped": self.outbox.dropped})
        self._report(topics.system(self.device_id), sample.to_bytes())

    def _report(self, topic: str, payload: bytes) -> None:
        """Hand a report to the outbox; one the disk refuses (it is full) still goes out if the broker is there.

        The direct publish is not durable, but a deployment's "failed: disk full" is the report that
        matters most exactly when the disk is full.
        """
        if not self.outbox.put(topic, payload) and self._client.is_connected():
            self._client.publish(topic, payload, qos=1)

    def _publish_state(self) -> None:
        self._client.publish(topics.state(self.device_id), self._state("online").to_bytes(), qos=1, retain=True)

    def _event(self, job: Deployment | BenchmarkRequest, phase: Phase, error: str = "") -> None:
        job_id = job.deployment_id if isinstance(job, Deployment) else job.request_id
        event = DeploymentEvent(device_id=self.device_id, deployment_id=job_id,
                                package_id=job.package.id, phase=phase, error=error)
        self._report(topics.events(self.device_id), event.to_bytes())

    def _roll_back_after_crashes(self) -> None:
        """At start-up: if the model on trial has crashed the agent too often, serve the previous one again.

        The decision is saved before ``current`` moves and the trial is closed only after the failure
        event is queued, so a crash at any step of the rollback repeats the rest of it at the next
        start (the event may then be reported twice; the fleet side stores it once).
        """
        history = self.history.load()
        trial = history.trial
        if trial is None:
            return
        if trial.rollback is None:
            current = self._current()
            if current is None or current.sha256 != trial.sha256:
                return
            trial.starts += 1
            crashes = trial.starts
            if crashes < self.max_crashes:
                self.history.save(history)
                if crashes:
                    self.log.warning("%s crashed the agent %d time(s) since it was installed; %d more and it is "
                                     "rolled back", trial.package_id, crashes, self.max_crashes - crashes)
                return
            previous = self.store.installed(trial.previous) if trial.previous else None
            if previous is None:
                trial.rollback = (f"{trial.package_id} crashed the agent {crashes} times and there is no previous "
                                  "model to go back to")
            else:
                trial.rollback = (f"{trial.package_id} crashed the agent {crashes} times; "
                                  f"rolled back to {previous.manifest.package_id}")
            self.history.save(history)
            crash_point("rollback:decided")
        else:
            self.log.warning("finishing a rollback that a crash interrupted: %s", trial.rollback)
        previous = self.store.installed(trial.previous) if trial.previous else None
        if previous is not None:
            self.store.activate(previous)
            crash_point("rollback:activated")
        self.log.error("%s", trial.rollback)
        event = DeploymentEvent(device_id=self.device_id, deployment_id=trial.deployment_id,
                                package_id=trial.package_id, phase=Phase.FAILED, error=trial.rollback)
        self._report(topics.events(self.device_id), event.to_bytes())
        crash_point("rollback:reported")
        history.trial = None
        history.finish(trial.deployment_id)
        self.history.save(history)
        self.counters.deployments_failed += 1

