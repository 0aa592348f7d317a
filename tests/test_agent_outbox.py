"""The on-disk outbox: reports wait for the broker, in order, across a broker outage and an agent restart."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from conftest import AgentProcess, TcpProxy, Watcher, clear_retained

from edgefleet.agent.outbox import Outbox
from edgefleet.agent.transport import BrokerURL


def test_messages_leave_in_order_only_when_acknowledged(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    for i in range(5):
        box.put("t", f"m{i}".encode())
    first = box.oldest(3)
    assert [m.payload for m in first] == [b"m0", b"m1", b"m2"]
    assert [m.payload for m in box.oldest(10, after=first[-1].id)] == [b"m3", b"m4"]
    box.acknowledge(first[1].id)
    box.close()
    reopened = Outbox(tmp_path / "outbox.sqlite")  # an agent restart
    assert [m.payload for m in reopened.oldest(10)] == [b"m0", b"m2", b"m3", b"m4"]


def test_a_full_outbox_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", max_messages=3)
    for i in range(7):
        box.put("t", f"m{i}".encode())
    assert [m.payload for m in box.oldest(10)] == [b"m4", b"m5", b"m6"]
    assert box.dropped == 4
    box.close()
    assert Outbox(tmp_path / "outbox.sqlite").dropped == 4, "the count survives a restart"


def test_telemetry_queued_while_the_broker_is_unreachable_arrives_in_order_afterwards(
    broker_url: str, tmp_path: Path, signing_key: tuple[Path, Path]
) -> None:
    device = f"outbox-{uuid.uuid4().hex[:8]}"
    proxy = TcpProxy(BrokerURL.parse(broker_url).port).restore()  # the agent's only way to the broker
    watcher = Watcher(broker_url, f"edgefleet/v1/devices/{device}/system")  # connected directly, throughout
    agent = AgentProcess(proxy.url, device, tmp_path / "data", signing_key[1],
                         extra=("--system-interval", "0.5")).start()
    try:
        watcher.wait_for(lambda t, m: True, timeout=30)
        proxy.cut()  # a network partition: samples pile up on the device's disk
        time.sleep(3)
        agent.stop()  # and the agent restarts while they wait
        agent.start()
        time.sleep(2)
        cut_at = time.time()
        proxy.restore()
        _, latest = watcher.wait_for(lambda t, m: m["ts"] > cut_at + 1 and m["outbox_pending"] == 0, timeout=60)
        received = [json.loads(p) for _, p in watcher.messages]
    finally:
        agent.stop()
        watcher.close()
        proxy.cut()
        clear_retained(broker_url, f"edgefleet/v1/devices/{device}/state")
    stamps = [m["ts"] for m in received]
    assert stamps == sorted(stamps), "delivered in the order they were taken"
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) < 3.5, f"no stretch of the partition is missing: the largest gap is {max(gaps):.1f} s"
    assert sum(1 for m in received if m["outbox_pending"] > 0) >= 4, "samples waited on disk and were delivered"
    assert latest["outbox_dropped"] == 0
