"""push_package and `edgefleet push` against the shared Mosquitto, and a fake device answering."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from conftest import free_port
from test_deploy_support import Subscriber, event, make_package, publish, state

from edgefleet.agent import topics
from edgefleet.agent.messages import Deployment, Phase, parse
from edgefleet.agent.package import file_sha256
from edgefleet.agent.transport import BrokerURL, make_client
from edgefleet.deploy.link import PushError
from edgefleet.deploy.push import (
    DeploymentWatcher,
    clear_deployment,
    clear_package,
    fleet_states,
    push_package,
    wait_for_devices,
)
from edgefleet.deploy.push_cli import push


@pytest.fixture
def package(tmp_path: Path, signing_key: tuple[Path, Path]) -> Path:
    return make_package(tmp_path, signing_key, model_bytes=5000)


@pytest.fixture
def cleanup(broker_url: str) -> Iterator[list[tuple[dict[str, Any], Deployment]]]:
    """Tests append (target, deployment); their retained messages are removed afterwards."""
    pushed: list[tuple[dict[str, Any], Deployment]] = []
    yield pushed
    url = BrokerURL.parse(broker_url)
    for target, deployment in pushed:
        clear_deployment(url, **target)
        clear_package(url, deployment.package)


def test_push_retains_chunks_then_deployment(broker_url: str, package: Path, device_id: str, cleanup: list) -> None:
    url = BrokerURL.parse(broker_url)
    deployment = push_package(package, broker=url, device=device_id, chunk_size=1024)
    cleanup.append(({"device": device_id}, deployment))
    ref = deployment.package
    assert ref.id == "tiny@1.0:raspberry-pi-4" and deployment.profile == "raspberry-pi-4"
    assert ref.sha256 == file_sha256(package) and ref.size == package.stat().st_size
    assert ref.chunk_count() == -(-ref.size // 1024)

    with Subscriber(broker_url, topics.device_deploy(device_id)) as sub:
        (message,) = sub.wait(1)
    assert message.retain
    assert parse(Deployment, bytes(message.payload)) == deployment

    with Subscriber(broker_url, topics.package_chunks(ref.sha256)) as sub:
        chunks = sub.wait(ref.chunk_count())
    assert len(chunks) == ref.chunk_count()
    by_index = {topics.chunk_index(m.topic): m.payload for m in chunks}
    assert sorted(by_index) == list(range(ref.chunk_count()))
    for i, data in by_index.items():
        assert hashlib.sha256(data).hexdigest() == ref.chunk_sha256[i]
    assert hashlib.sha256(b"".join(by_index[i] for i in sorted(by_index))).hexdigest() == ref.sha256


def test_clear_removes_retained_messages(broker_url: str, package: Path, device_id: str) -> None:
    url = BrokerURL.parse(broker_url)
    deployment = push_package(package, broker=url, device=device_id, chunk_size=4096)
    clear_deployment(url, device=device_id)
    clear_package(url, deployment.package)
    with Subscriber(broker_url, topics.device_deploy(device_id), topics.package_chunks(deployment.package.sha256)) as sub:
        time.sleep(0.3)
    assert sub.messages == []


def test_unreachable_broker_fails_fast_and_says_what_to_do(package: Path, device_id: str) -> None:
    url = BrokerURL.parse(f"mqtt://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(PushError) as info:
        push_package(package, broker=url, device=device_id, timeout=5)
    assert time.monotonic() - started < 3
    assert str(url) in str(info.value) and "edgefleet broker" in str(info.value)
    assert info.value.broker == url


def test_exactly_one_target(package: Path) -> None:
    url = BrokerURL.parse("mqtt://127.0.0.1:1")
    with pytest.raises(ValueError, match="exactly one"):
        push_package(package, broker=url)
    with pytest.raises(ValueError, match="exactly one"):
        push_package(package, broker=url, device="a", group="b")
    with pytest.raises(ValueError, match="invalid device id"):
        push_package(package, broker=url, device="a/#")


@pytest.mark.parametrize("args", [[], ["--device", "a", "--group", "b"]])
def test_cli_needs_exactly_one_target(package: Path, args: list[str]) -> None:
    result = CliRunner().invoke(push, [str(package), *args])
    assert result.exit_code == 2
    assert "exactly one target" in result.output


def test_cli_rejects_bad_ids_and_sizes(package: Path) -> None:
    result = CliRunner().invoke(push, [str(package), "--device", "no/slashes"])
    assert result.exit_code == 2 and "invalid device id" in result.output
    result = CliRunner().invoke(push, [str(package), "--device", "a", "--chunk-size", "12 parsecs"])
    assert result.exit_code == 2 and "not a size" in result.output
    result = CliRunner().invoke(push, [str(package), "--device", "a", "--timeout", "5"])
    assert result.exit_code == 2 and "--timeout applies only with --wait" in result.output


def test_cli_unreachable_broker(package: Path) -> None:
    result = CliRunner().invoke(push, [str(package), "--device", "a", "--broker", f"mqtt://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1
    assert "cannot reach the MQTT broker" in result.output and "edgefleet broker" in result.output


def test_cli_push_json(broker_url: str, package: Path, device_id: str, cleanup: list) -> None:
    result = CliRunner().invoke(push, [str(package), "--device", device_id, "--broker", broker_url, "--chunk-size", "2KiB", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    deployment = Deployment.model_validate(out["deployment"])
    cleanup.append(({"device": device_id}, deployment))
    assert out["target"] == {"device": device_id}
    assert deployment.package.chunk_size == 2048


class FakeAgent:
    """Just enough of a device: answers a deployment on its topic with events, without installing."""

    def __init__(self, broker_url: str, device: str, phases: list[Phase], error: str = "", *, topic: str = "") -> None:
        self.url = BrokerURL.parse(broker_url)
        self.device, self.phases, self.error = device, phases, error
        self.topic = topic or topics.device_deploy(device)
        self.client = make_client(self.url)
        self.client.on_message = self._on_message
        self.ready = threading.Event()
        self.client.on_subscribe = lambda *args: self.ready.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            return
        deployment = parse(Deployment, bytes(message.payload))
        for phase in self.phases:
            error = self.error if phase is Phase.FAILED else ""
            client.publish(topics.events(self.device), event(self.device, deployment.deployment_id, phase, error).to_bytes(), qos=1)

    def __enter__(self) -> FakeAgent:
        self.client.connect(self.url.host, self.url.port)
        self.client.loop_start()
        self.client.subscribe(self.topic, qos=1)
        assert self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_watcher_sees_a_fast_device(broker_url: str, package: Path, device_id: str, cleanup: list) -> None:
    url = BrokerURL.parse(broker_url)
    seen: list[Phase] = []
    with FakeAgent(broker_url, device_id, [Phase.RECEIVED, Phase.DOWNLOADING, Phase.DONE]), DeploymentWatcher(url) as watcher:
        deployment = push_package(package, broker=url, device=device_id)
        cleanup.append(({"device": device_id}, deployment))
        outcomes = watcher.wait(
            deployment.deployment_id, [device_id, "test-absent"], timeout=0.7, on_event=lambda e: seen.append(e.phase)
        )
    assert seen == [Phase.RECEIVED, Phase.DOWNLOADING, Phase.DONE]
    assert outcomes[device_id].ok and outcomes[device_id].finished
    assert outcomes["test-absent"].phase is None and not outcomes["test-absent"].finished


def test_wait_for_devices_reports_failure(broker_url: str, device_id: str) -> None:
    url = BrokerURL.parse(broker_url)

    def device_reports() -> None:
        time.sleep(0.3)
        for phase in (Phase.VERIFYING, Phase.FAILED, Phase.VERIFYING):  # a late duplicate must not undo "failed"
            publish(broker_url, topics.events(device_id), event(device_id, "dep-1", phase, "bad signature").to_bytes())

    threading.Thread(target=device_reports, daemon=True).start()
    outcomes = wait_for_devices(url, "dep-1", [device_id], timeout=5)
    assert outcomes[device_id].phase is Phase.FAILED and outcomes[device_id].error == "bad signature"


def test_cli_wait_exit_codes(broker_url: str, package: Path, device_id: str, cleanup: list) -> None:
    with FakeAgent(broker_url, device_id, [Phase.RECEIVED, Phase.DONE]):
        result = CliRunner().invoke(push, [str(package), "--device", device_id, "--broker", broker_url, "--wait", "--timeout", "5"])
    assert result.exit_code == 0, result.output
    assert f"{device_id}: installed" in result.output

    with FakeAgent(broker_url, device_id, [Phase.RECEIVED, Phase.FAILED], error="runtime missing"):
        result = CliRunner().invoke(
            push, [str(package), "--device", device_id, "--broker", broker_url, "--wait", "--timeout", "5", "--json"]
        )
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    cleanup.append(({"device": device_id}, Deployment.model_validate(out["deployment"])))
    assert out["devices"] == [{"device": device_id, "phase": "failed", "error": "runtime missing", "ok": False}]


def test_fleet_states_reads_retained_states(broker_url: str, device_id: str) -> None:
    topic = topics.state(device_id)
    publish(broker_url, topic, state(device_id, groups=["g1"]).to_bytes(), retain=True)
    try:
        states = {s.device_id: s for s in fleet_states(BrokerURL.parse(broker_url), settle=0.3)}
    finally:
        publish(broker_url, topic, b"", retain=True)
    assert states[device_id].groups == ["g1"]


def test_group_push_is_per_profile(broker_url: str, package: Path, device_id: str, cleanup: list) -> None:
    url = BrokerURL.parse(broker_url)
    group = f"grp-{device_id}"
    deployment = push_package(package, broker=url, group=group)
    cleanup.append(({"group": group, "profile": "raspberry-pi-4"}, deployment))
    with Subscriber(broker_url, topics.group_deploy(group, "raspberry-pi-4"), topics.group_deploy(group, "esp32-s3")) as sub:
        (message,) = sub.wait(1)
        time.sleep(0.2)  # nothing arrives for the other profile
    assert message.topic == topics.group_deploy(group, "raspberry-pi-4")
    assert len(sub.messages) == 1 and parse(Deployment, bytes(message.payload)) == deployment
    with pytest.raises(ValueError, match="per profile"):
        clear_deployment(url, group=group)


def test_cli_group_wait_uses_retained_states(broker_url: str, package: Path, device_id: str, cleanup: list) -> None:
    group = f"grp-{device_id}"
    members = {
        f"{device_id}-on": state(f"{device_id}-on", groups=[group]),
        f"{device_id}-off": state(f"{device_id}-off", groups=[group], status="offline"),
        f"{device_id}-mcu": state(f"{device_id}-mcu", groups=[group], profile="esp32-s3"),
        f"{device_id}-other": state(f"{device_id}-other", groups=["elsewhere"]),
    }
    for name, s in members.items():
        publish(broker_url, topics.state(name), s.to_bytes(), retain=True)
    try:
        agent = FakeAgent(broker_url, f"{device_id}-on", [Phase.DONE], topic=topics.group_deploy(group, "raspberry-pi-4"))
        with agent:
            result = CliRunner().invoke(push, [str(package), "--group", group, "--broker", broker_url, "--wait", "--timeout", "5", "--json"])
    finally:
        for name in members:
            publish(broker_url, topics.state(name), b"", retain=True)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    cleanup.append(({"group": group, "profile": "raspberry-pi-4"}, Deployment.model_validate(out["deployment"])))
    assert out["target"] == {"group": group, "profile": "raspberry-pi-4"}
    assert [d["device"] for d in out["devices"]] == [f"{device_id}-on"]
    assert sorted(out["skipped"]) == [f"{device_id}-mcu", f"{device_id}-off"]
