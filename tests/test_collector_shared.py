"""Two collectors sharing the load through an MQTT shared subscription, against the real Mosquitto.

Every report is stored exactly once: the broker gives each message to one member of the group, and
what an agent's outbox delivers twice is absorbed by the store's idempotent inserts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from test_deploy_support import benchmark
from test_store_backends import postgres_url, store_location  # noqa: F401  (fixtures)

from edgefleet.agent import topics
from edgefleet.agent.transport import BrokerURL, make_client
from edgefleet.deploy.collector import Collector, subscriptions
from edgefleet.deploy.store import TelemetryStore

N = 60


@pytest.fixture
def group() -> str:
    return f"edgefleet-test-{uuid.uuid4().hex[:8]}"  # its own group, so parallel tests do not share with us


def test_shared_topics_and_bad_groups() -> None:
    assert subscriptions("g1")[1] == "$share/g1/edgefleet/v1/devices/+/telemetry"
    assert subscriptions(None) == (topics.ALL_STATES, topics.ALL_TELEMETRY, topics.ALL_EVENTS)
    for bad in ("", "a/b", "+", "#", "$x", "a b"):
        with pytest.raises(ValueError):
            subscriptions(bad)


@pytest.fixture
def two_collectors(broker_url: str, store_location: str, group: str) -> Iterator[tuple[Collector, Collector]]:  # noqa: F811
    # Each collector has its own connection, as two processes (or machines) would.
    stores = [TelemetryStore(store_location), TelemetryStore(store_location)]
    collectors = [Collector(BrokerURL.parse(broker_url), s, shared_group=group).start(timeout=5) for s in stores]
    yield collectors[0], collectors[1]
    for c in collectors:
        c.stop()
    for s in stores:
        s.close()


def test_two_collectors_store_every_report_exactly_once(
    broker_url: str, two_collectors: tuple[Collector, Collector], store_location: str, device_id: str  # noqa: F811
) -> None:
    a, b = two_collectors
    url = BrokerURL.parse(broker_url)
    client = make_client(url)
    client.connect(url.host, url.port)
    client.loop_start()
    try:
        reports = [benchmark(device_id, ts=1000.0 + i) for i in range(N)]
        infos = [client.publish(topics.telemetry(device_id), r.model_dump_json().encode(), qos=1) for r in reports]
        # An outbox redelivering after a reconnect: the same reports again.
        infos += [client.publish(topics.telemetry(device_id), r.model_dump_json().encode(), qos=1) for r in reports[:10]]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    assert a.wait_for(lambda: a.stats.benchmarks + b.stats.benchmarks >= N + 10, timeout=20)
    # The broker split the messages: nobody got all of them, and together they got each delivery once.
    assert a.stats.benchmarks + b.stats.benchmarks == N + 10
    assert a.stats.benchmarks > 0 and b.stats.benchmarks > 0
    assert a.stats.store_errors == b.stats.store_errors == 0
    with TelemetryStore(store_location) as store:
        stored = [r.ts for r in store.iter_benchmarks(device_id=device_id)]
    assert stored == [1000.0 + i for i in range(N)]
