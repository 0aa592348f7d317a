"""Helpers for the deploy tests: a blocking MQTT subscriber, and packages and messages to send.

No tests here; the other test_deploy_* modules import it (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as mqtt

from edgefleet.agent import keys
from edgefleet.agent.messages import (
    BenchmarkReport,
    DeploymentEvent,
    DeviceState,
    InstalledModel,
    LatencyStats,
    Phase,
    PowerReading,
)
from edgefleet.agent.package import Manifest, Target, TensorSpec, write_package
from edgefleet.agent.transport import BrokerURL, make_client


class Subscriber:
    """Subscribe to topic filters and collect messages; ``wait(n)`` blocks until n arrived."""

    def __init__(self, url: str | BrokerURL, *filters: str) -> None:
        self.url = url if isinstance(url, BrokerURL) else BrokerURL.parse(url)
        self.filters = filters
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = make_client(self.url)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def __enter__(self) -> Subscriber:
        self.client.connect(self.url.host, self.url.port)
        self.client.loop_start()
        self.client.subscribe([(f, 1) for f in self.filters])
        assert self._subscribed.wait(5), "no SUBACK"
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait(self, n: int, timeout: float = 5.0) -> list[mqtt.MQTTMessage]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)


def publish(url: str | BrokerURL, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Publish one QoS 1 message and wait for the broker's acknowledgement."""
    url = url if isinstance(url, BrokerURL) else BrokerURL.parse(url)
    client = make_client(url)
    client.connect(url.host, url.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def make_package(directory: Path, signing_key: tuple[Path, Path], *, model_bytes: int = 5000, profile: str = "raspberry-pi-4") -> Path:
    """A signed package whose model file is random bytes (push never runs the model)."""
    manifest = Manifest(
        name="tiny",
        version="1.0",
        target=Target(profile=profile, runtime="onnxruntime"),
        model_file="model.onnx",
        inputs=[TensorSpec(name="x", shape=[1, 4], dtype="float32")],
        outputs=[TensorSpec(name="y", shape=[1, 2], dtype="float32")],
        compression={"scheme": "none"},
    )
    path = directory / f"tiny-{profile}.efpkg"
    write_package(path, manifest, {"model.onnx": os.urandom(model_bytes)}, keys.load_private(signing_key[0]))
    return path


def state(device: str, **changes: object) -> DeviceState:
    base = DeviceState(
        device_id=device,
        status="online",
        profile="raspberry-pi-4",
        simulated=True,
        groups=["kitchen"],
        agent_version="0.1.0",
        runtimes={"onnxruntime": "1.17.0"},
        model=InstalledModel(
            package_id="tiny@1.0:raspberry-pi-4", name="tiny", version="1.0", runtime="onnxruntime",
            sha256="a" * 64, installed_at=time.time(),
        ),
    )
    # Validate the changes as the wire would, so tests cannot build a message no device could send.
    return DeviceState.model_validate({**base.model_dump(), **changes})


def event(device: str, deployment_id: str, phase: Phase, error: str = "") -> DeploymentEvent:
    return DeploymentEvent(
        device_id=device, deployment_id=deployment_id, package_id="tiny@1.0:raspberry-pi-4", phase=phase, error=error
    )


def benchmark(device: str, *, version: str = "1.0", p50: float = 1.5, ts: float | None = None) -> BenchmarkReport:
    return BenchmarkReport(
        device_id=device,
        profile="raspberry-pi-4",
        simulated=True,
        package_id=f"tiny@{version}:raspberry-pi-4",
        model_name="tiny",
        model_version=version,
        runtime="onnxruntime",
        runtime_version="1.17.0",
        threads=4,
        warmup=10,
        runs=100,
        load_ms=12.0,
        first_inference_ms=3.0,
        latency_ms=LatencyStats(mean=p50 * 1.1, std=0.2, min=p50 * 0.8, p50=p50, p90=p50 * 1.4, p99=p50 * 2, max=p50 * 3),
        throughput_ips=1000 / (p50 * 1.1),
        peak_rss_mb=45.25,
        cpu_percent=98.0,
        power=PowerReading(watts=3.4, idle_watts=2.7, source="estimate"),
        energy_mj=3.4 * p50 * 1.1,
        ts=time.time() if ts is None else ts,
    )
