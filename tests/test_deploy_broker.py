"""The embedded amqtt broker: retained messages, large payloads, a clean port-in-use error."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_deploy_support import Subscriber, make_package, publish

from edgefleet.agent import topics
from edgefleet.agent.messages import Deployment, parse
from edgefleet.deploy.broker import EmbeddedBroker, PortInUseError, broker_command
from edgefleet.deploy.push import push_package


def test_retained_megabyte_reaches_a_later_subscriber() -> None:
    payload = hashlib.sha256(b"seed").digest() * (1024 * 1024 // 32)
    with EmbeddedBroker(port=0) as broker:
        assert broker.port != 0
        publish(broker.url, "t/big", payload, retain=True)
        with Subscriber(broker.url, "t/+") as sub:
            (message,) = sub.wait(1)
        assert message.retain and message.payload == payload
    assert not broker.running
    with pytest.raises(OSError):  # stopped means stopped listening
        socket.create_connection((broker.host, broker.port), timeout=1).close()


def test_clients_get_only_what_they_subscribed_to() -> None:
    # amqtt 0.12 on its own hands a connecting client the retained messages of everyone else's
    # subscriptions: a device would see other devices' deployments. EmbeddedBroker fixes that.
    with EmbeddedBroker(port=0) as broker:
        publish(broker.url, "a/deploy", b"for a", retain=True)
        publish(broker.url, "b/deploy", b"for b", retain=True)
        with Subscriber(broker.url, "a/+") as a:
            assert [m.topic for m in a.wait(1)] == ["a/deploy"]
            with Subscriber(broker.url, "b/+") as b, Subscriber(broker.url, "c/+") as c:
                publish(broker.url, "b/live", b"live")
                assert [m.topic for m in b.wait(2)] == ["b/deploy", "b/live"]
                time.sleep(0.2)
            assert [m.topic for m in a.messages] == ["a/deploy"]
            assert c.messages == []


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} is in use — is Mosquitto already running"):
            EmbeddedBroker(port=port).start()
        result = CliRunner().invoke(broker_command, ["--port", str(port)])
    assert result.exit_code == 1
    assert "use --port or point --broker at it" in result.output


def test_help_points_production_at_mosquitto() -> None:
    result = CliRunner().invoke(broker_command, ["--help"])
    assert result.exit_code == 0
    assert "quick start" in result.output and "Mosquitto" in result.output


def test_push_through_the_embedded_broker(tmp_path: Path, signing_key: tuple[Path, Path], device_id: str) -> None:
    # The demo's path: push with amqtt as the broker, a device reassembles the chunks.
    package = make_package(tmp_path, signing_key, model_bytes=700_000)
    with EmbeddedBroker(port=0) as broker:
        deployment = push_package(package, broker=broker.url, device=device_id)
        ref = deployment.package
        assert ref.chunk_count() == 3  # 256 KiB chunks
        with Subscriber(broker.url, topics.device_deploy(device_id), topics.package_chunks(ref.sha256)) as sub:
            messages = sub.wait(1 + ref.chunk_count())
    by_topic = {m.topic: m.payload for m in messages}
    assert parse(Deployment, bytes(by_topic[topics.device_deploy(device_id)])) == deployment
    data = b"".join(by_topic[topics.package_chunk(ref.sha256, i)] for i in range(ref.chunk_count()))
    assert data == package.read_bytes()
