"""The collector against the shared Mosquitto, and `edgefleet telemetry` on what it stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import free_port
from test_deploy_support import benchmark, event, publish, state

from edgefleet.agent import topics
from edgefleet.agent.errors import TransportError
from edgefleet.agent.messages import Phase
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.collector import Collector
from edgefleet.deploy.store import TelemetryStore
from edgefleet.deploy.telemetry_cli import EMPTY_HINT, telemetry


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "fleet.db"


@pytest.fixture
def collector(broker_url: str, db: Path) -> Iterator[Collector]:
    store = TelemetryStore(db)
    c = Collector(BrokerURL.parse(broker_url), store).start(timeout=5)
    yield c
    c.stop()
    store.close()


def test_collects_good_messages_and_counts_bad_ones(
    broker_url: str, collector: Collector, device_id: str, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = f"{device_id}-b"
    state_topic = topics.state(device_id)
    publish(broker_url, state_topic, state(device_id).to_bytes(), retain=True)
    try:
        publish(broker_url, topics.events(device_id), event(device_id, "dep-1", Phase.DONE).to_bytes())
        publish(broker_url, topics.telemetry(device_id), benchmark(device_id, p50=1.234).to_bytes())
        publish(broker_url, topics.telemetry(other), benchmark(other, version="2.0", p50=20.0).to_bytes())
        # Garbage: not JSON, wrong schema, an unknown kind, another device's id.
        publish(broker_url, topics.telemetry(device_id), b"\x00\xffnot json")
        publish(broker_url, topics.events(device_id), b'{"device_id": "x"}')
        publish(broker_url, topics.telemetry(device_id), b'{"kind": "cpu-sample", "device_id": "x"}')
        publish(broker_url, topics.events(device_id), event(other, "dep-1", Phase.DONE).to_bytes())
        # The shared broker carries other tests' devices too: count only this test's messages.
        store = collector.store
        mine = {device_id, other}

        def rejected() -> list[str]:
            return [r.getMessage() for r in caplog.records if device_id in r.getMessage() and "rejected" in r.getMessage()]

        def arrived() -> bool:
            return (
                len(rejected()) >= 4
                and any(d.device_id == device_id for d in store.devices())
                and len(store.events("dep-1")) >= 1
                and len([b for b in store.latest_benchmarks() if b.device_id in mine]) >= 2
            )

        assert collector.wait_for(arrived, timeout=5), collector.stats
    finally:
        publish(broker_url, state_topic, b"", retain=True)
    assert collector.stats.rejected >= 4 and collector.stats.store_errors == 0
    reasons = rejected()
    assert len(reasons) == 4
    assert all(topics.telemetry(device_id) in r or topics.events(device_id) in r for r in reasons)
    assert any("Invalid JSON" in r for r in reasons) and any("does not match the topic" in r for r in reasons)

    assert [d.device_id for d in store.devices() if d.device_id in mine] == [device_id]
    assert [e.phase for e in store.events("dep-1")] == [Phase.DONE]

    result = CliRunner().invoke(telemetry, ["--db", str(db)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["DEVICE", "PROFILE", "MODEL"]
    row = next(line for line in lines if line.startswith(device_id + " "))
    assert "raspberry-pi-4 (sim)" in row and "tiny@1.0" in row and "1.23" in row and "estimate" in row
    assert any(line.startswith(other) and "tiny@2.0" in line for line in lines)

    result = CliRunner().invoke(telemetry, ["--db", str(db), "--json"])
    records = {r["device"]: r for r in json.loads(result.output)}
    assert records[device_id]["p50_ms"] == 1.234 and records[device_id]["simulated"] is True
    assert records[device_id]["power_source"] == "estimate" and records[device_id]["status"] == "online"
    assert records[other]["model"] == "tiny@2.0"


def test_deleted_retained_messages_are_ignored(
    broker_url: str, collector: Collector, device_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    publish(broker_url, topics.state(device_id), b"", retain=True)
    publish(broker_url, topics.events(device_id), event(device_id, "d", Phase.RECEIVED).to_bytes())
    # Events of one device arrive in order, so once the event is stored the empty state has been handled.
    assert collector.wait_for(lambda: len(collector.store.events("d")) >= 1, timeout=5)
    assert device_id not in {d.device_id for d in collector.store.devices()}
    assert device_id not in caplog.text


def test_start_with_timeout_fails_when_no_broker(db: Path) -> None:
    with TelemetryStore(db) as store:
        collector = Collector(BrokerURL.parse(f"mqtt://127.0.0.1:{free_port()}"), store)
        with pytest.raises(TransportError, match="could not subscribe"):
            collector.start(timeout=0.5)


def test_collector_reconnects_after_a_broker_restart(mosquitto, db: Path, device_id: str) -> None:  # type: ignore[no-untyped-def]
    with TelemetryStore(db) as store:
        collector = Collector(BrokerURL.parse(mosquitto.url), store, reconnect_max_delay=1).start(timeout=5)
        try:
            mosquitto.stop()
            assert collector.wait_for(lambda: not collector.subscribed, timeout=5)
            mosquitto.start()
            assert collector.wait_for(lambda: collector.subscribed, timeout=10)
            publish(mosquitto.url, topics.events(device_id), event(device_id, "d", Phase.DONE).to_bytes())
            assert collector.wait_for(lambda: collector.stats.events == 1, timeout=5)
        finally:
            collector.stop()


def test_telemetry_on_an_empty_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(telemetry, ["--db", str(tmp_path / "none.db")])
    assert result.exit_code == 0
    assert EMPTY_HINT in result.output
    assert not (tmp_path / "none.db").exists()
    result = CliRunner().invoke(telemetry, ["--db", str(tmp_path / "none.db"), "--json"])
    assert json.loads(result.output) == []
