"""Shared fixtures: a real Mosquitto broker, signing keys, and the repo's small trained models."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from edgefleet.agent import keys, topics
from edgefleet.agent.transport import BrokerURL

if TYPE_CHECKING:
    from edgefleet.agent.messages import PackageRef

# Property-based tests (tests/test_fuzz.py): a quick run by default, `HYPOTHESIS_PROFILE=long` for
# a thorough one. No deadline: how long an example takes is the benchmarks' business, not a test's.
settings.register_profile("default", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The suite runs against the machine's Mosquitto (the README's test command installs and starts it).
SHARED_BROKER = "mqtt://127.0.0.1:1883"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Mosquitto at 127.0.0.1:1883, or a private one if none is running there."""
    url = BrokerURL.parse(SHARED_BROKER)
    try:
        wait_for_port(url.port, timeout=1)
    except TimeoutError:
        broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
        broker.start()
        yield broker.url
        broker.stop()
        return
    yield SHARED_BROKER


class Mosquitto:
    """A private Mosquitto on a free port, for tests that stop, restart or reconfigure the broker."""

    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        """``persistent``: retained messages and sessions survive a restart, and sessions queue as on a production broker."""
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = workdir / "mosquitto.conf"
        # A production broker also queues more for an absent persistent session than Mosquitto's default
        # 1,000 messages (docs/scaling.md), or a restarting collector loses what overflows.
        persistence = (f"persistence true\npersistence_location {workdir}/\nmax_queued_messages 100000\n"
                       if persistent else "persistence false\n")
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{persistence}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def device_id() -> str:
    """A device id no other test uses, so tests can share one broker."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private key path, public key path)."""
    return keys.generate(tmp_path_factory.mktemp("keys") / "signing.key")


@pytest.fixture
def package(tmp_path: Path, signing_key: tuple[Path, Path]) -> Path:
    """A signed package of the tiny ONNX model (``make_package``), in the test's own directory."""
    return make_package(tmp_path / "tiny.efpkg", signing_key[0])


@pytest.fixture
def trust(signing_key: tuple[Path, Path]) -> keys.TrustStore:
    """A trust store holding the session's signing key."""
    return keys.TrustStore.from_paths([signing_key[1]])


@pytest.fixture(scope="session")
def digits_mlp(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The MLP trained on scikit-learn's digits, as ONNX, with calibration and validation data."""
    from edgefleet.compiler import model_zoo

    return model_zoo.digits_mlp(tmp_path_factory.mktemp("zoo"))


def tiny_onnx(scale: float = 1.0, pad_bytes: int = 0) -> bytes:
    """y = x @ W * scale + b: a four-input linear model whose outputs change with ``scale``.

    ``pad_bytes`` adds an unused initializer of random (incompressible) floats, for a package large
    enough that a transfer can be interrupted in the middle.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 3)) * scale).astype(np.float32), "W")
    b = numpy_helper.from_array(np.arange(3, dtype=np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[w, b] + ([numpy_helper.from_array(rng.standard_normal(pad_bytes // 4).astype(np.float32), "pad")]
                              if pad_bytes else []),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_package(path: Path, key_path: Path, *, profile: str = "raspberry-pi-4", version: str = "1",
                 scale: float = 1.0, model_bytes: bytes | None = None, expected_shift: float = 0.0,
                 pad_bytes: int = 0) -> Path:
    """Write a signed package of ``tiny_onnx(scale)`` with test vectors computed by onnxruntime.

    ``expected_shift`` corrupts the expected outputs, to make a package that fails its test vectors.
    """
    import numpy as np
    import onnxruntime as ort

    from edgefleet.agent.package import (
        Manifest,
        Target,
        TensorSpec,
        TestVectors,
        pack_test_vectors,
        write_package,
    )

    model = model_bytes if model_bytes is not None else tiny_onnx(scale, pad_bytes)
    feeds = [{"x": np.full((1, 4), i, dtype=np.float32)} for i in range(3)]
    if model_bytes is None:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        outputs = [[o + expected_shift for o in session.run(None, f)] for f in feeds]
    else:
        outputs = [[np.zeros((1, 3), np.float32)] for _ in feeds]
    manifest = Manifest(
        name="tiny", version=version, target=Target(profile=profile, runtime="onnxruntime"), model_file="model.onnx",
        inputs=[TensorSpec(name="x", shape=[1, 4], dtype="float32")],
        outputs=[TensorSpec(name="y", shape=[1, 3], dtype="float32")],
        compression={"scheme": "fp32"}, test_vectors=TestVectors(file="test_vectors.npz", count=3, rtol=1e-4, atol=1e-5),
    )
    files = {"model.onnx": model, "test_vectors.npz": pack_test_vectors(feeds, outputs)}
    write_package(path, manifest, files, keys.load_private(key_path))
    return path


def publish(broker: str, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Publish one raw message at QoS 1 and wait for the broker's acknowledgement."""
    from edgefleet.agent.transport import make_client

    url = BrokerURL.parse(broker)
    client = make_client(url)
    client.connect(url.host, url.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def clear_retained(broker: str, topic: str) -> None:
    """Delete a retained message (an empty retained payload), so tests leave the shared broker clean."""
    publish(broker, topic, b"", retain=True)


def forget_device(broker: str, device_id: str, packages: Iterable[PackageRef] = ()) -> None:
    """Leave the shared broker as a test found it: no retained deployment or state of ``device_id``,
    and no retained chunks of ``packages``."""
    from edgefleet.deploy.push import clear_deployment, clear_package

    url = BrokerURL.parse(broker)
    clear_deployment(url, device=device_id)
    clear_retained(broker, topics.state(device_id))
    for ref in packages:
        clear_package(url, ref)


class Watcher:
    """Collects every message on some topics, for tests to wait on."""

    def __init__(self, broker: str, *subscriptions: str) -> None:
        import threading

        from edgefleet.agent.transport import make_client

        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._client = make_client(BrokerURL.parse(broker))
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe([(s, 1) for s in subscriptions])
        url = BrokerURL.parse(broker)
        self._client.connect(url.host, url.port)
        self._client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 60.0):  # type: ignore[no-untyped-def]
        """The first decoded JSON message (topic, dict) for which ``predicate`` holds."""
        import json

        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for topic, payload in self.messages[seen:]:
                    try:
                        body = json.loads(payload)
                    except ValueError:
                        continue
                    if predicate(topic, body):
                        return topic, body
                seen = len(self.messages)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching message in {timeout}s; saw {[t for t, _ in self.messages]}")
                self._cond.wait(remaining)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class AgentProcess:
    """A real `edgefleet agent` process, its log in a file."""

    def __init__(self, broker: str, device_id: str, data_dir: Path, trust: Path, *, profile: str = "raspberry-pi-4",
                 extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        import sys

        self.env = env
        self.log_path = data_dir.parent / f"{device_id}.log"
        self.argv = [str(Path(sys.executable).parent / "edgefleet"), "-v", "agent", "--broker", broker,
                     "--device-id", device_id, "--profile", profile, "--data-dir", str(data_dir),
                     "--trust", str(trust), "--simulate", "--warmup", "2", "--runs", "20", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        import os

        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"), env=env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class TcpProxy:
    """A TCP relay between a client and a broker that a test can cut and restore: a network partition
    for one client while the broker and its other clients carry on."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target_port = target_port
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def restore(self) -> TcpProxy:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        with self._lock:
            for s in [self._listener, *self._sockets]:
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self._sockets.clear()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
