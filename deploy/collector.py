"""The collector: listens to every device and writes what it hears to the telemetry store.

It subscribes at QoS 1 to three wildcards (``docs/protocol.md``):

    edgefleet/v1/devices/+/state       DeviceState        -> store.record_state
    edgefleet/v1/devices/+/telemetry   BenchmarkReport    -> store.record_benchmark
    edgefleet/v1/devices/+/events      DeploymentEvent    -> store.record_event

Every payload is validated on paho's network thread; valid messages go to a writer thread that
stores whatever has queued up in one transaction (``store.record_many``), so under load the
batches grow and one SQLite file keeps up with thousands of messages a second
(``bench/fleet_scale.py``). ``stop()`` stores everything queued before it returns.

A message is acknowledged to the broker (PUBACK) only once its transaction has committed (paho's
manual acknowledgements), so a collector killed outright loses nothing: with a persistent session
(``client_id``) the broker redelivers what was not acknowledged, and the store's idempotent inserts
keep a message that was stored but not yet acknowledged from counting twice. The price is that the
broker's in-flight window (Mosquitto's ``max_inflight_messages``, 20 by default) caps how many
messages wait for one commit; docs/scaling.md says how to raise it for large fleets.

A malformed message (not JSON, wrong schema, or a device id that
does not match its topic) is logged with its topic and counted in ``stats.rejected``; the collector
carries on, because one broken device must not blind the fleet. Empty payloads are retained
messages being deleted and are skipped.

With ``shared_group`` it subscribes to ``$share/GROUP/<topic>`` instead (MQTT shared
subscriptions, supported by Mosquitto 2, EMQX, HiveMQ and others over MQTT 3.1.1 and 5): the
broker hands each message to one collector of the group, so several collectors on several
machines share the load. A message redelivered to another member after a disconnect, or sent
twice by an agent's outbox, is still stored once: the store's inserts are idempotent.

A collector started with a ``client_id`` has a persistent session (MQTT clean session off): the
broker keeps its subscriptions and queues its QoS 1 messages while it is away, so a restarted
collector loses nothing (bounded by the broker's queue, Mosquitto's ``max_queued_messages``).
Without one, the session is clean and what is published while it is down is not kept for it.

paho's network loop runs in a thread of ours and reconnects with capped exponential backoff,
resubscribing each time. If the thread
dies of an unexpected error, ``check()`` and ``wait_for()`` raise it in the caller's thread.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.agent import topics
from edgefleet.agent.errors import MessageError, TransportError
from edgefleet.agent.faults import crash_point
from edgefleet.agent.messages import (
    TELEMETRY,
    BenchmarkReport,
    DeploymentEvent,
    DeviceState,
    parse,
)
from edgefleet.agent.transport import BrokerURL, make_client
from edgefleet.deploy.store import TelemetryStore
from edgefleet.deploy.store_backends import database_errors

log = logging.getLogger(__name__)

SUBSCRIPTIONS = (topics.ALL_STATES, topics.ALL_TELEMETRY, topics.ALL_EVENTS)
DEFAULT_SHARED_GROUP = "edgefleet-collectors"
BATCH_MAX = 1000  # messages per transaction at most: bounds the time the store's lock is held
QUEUE_MAX = 10 * BATCH_MAX  # a slow database slows receiving (the broker queues) instead of filling memory
_STOP = object()  # tells the writer thread to finish
_GROUP = re.compile(r"^[^/+#$\s][^/+#\s]*$")


def subscriptions(shared_group: str | None = None) -> tuple[str, ...]:
    """The topic filters the collector subscribes to, shared within ``shared_group`` if given."""
    if shared_group is None:
        return SUBSCRIPTIONS
    if not _GROUP.match(shared_group):
        raise ValueError(f"{shared_group!r} is not a shared-subscription group: use letters, digits, - and _")
    return tuple(f"$share/{shared_group}/{t}" for t in SUBSCRIPTIONS)


@dataclass(frozen=True, slots=True)
class CollectorStats:
    """Messages handled since start: stored by kind, rejected as malformed, failed to store."""

    states: int = 0
    events: int = 0
    benchmarks: int = 0
    rejected: int = 0
    store_errors: int = 0

    @property
    def stored(self) -> int:
        return self.states + self.events + self.benchmarks


class Collector:
    """Subscribe to all devices on ``broker`` and record their messages in ``store``."""

    def __init__(
        self,
        broker: BrokerURL,
        store: TelemetryStore,
        *,
        client_id: str | None = None,
        shared_group: str | None = None,
        reconnect_max_delay: int = 30,
        logger: logging.Logger | None = None,
    ) -> None:
        self.broker = broker
        self.store = store
        self.log = logger or log
        self.shared_group = shared_group
        self.topics = subscriptions(shared_group)  # ValueError for a bad group, before anything connects
        self._store_errors = database_errors()
        # A named collector keeps a persistent session: while it is down (a restart, an upgrade) the
        # broker queues its QoS 1 messages instead of dropping them, and delivers them when it is back.
        self._client = make_client(broker, client_id, clean_start=client_id is None)
        self._client.manual_ack_set(True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=reconnect_max_delay)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._stats = CollectorStats()
        self._stats_lock = threading.Lock()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_MAX)
        self._failure: BaseException | None = None

    @property
    def stats(self) -> CollectorStats:
        with self._stats_lock:
            return self._stats

    @property
    def subscribed(self) -> bool:
        """True while connected with all subscriptions confirmed."""
        return self._subscribed.is_set()

    def start(self, timeout: float | None = None) -> Collector:
        """Start listening in a background thread.

        Without ``timeout`` this returns at once and keeps trying to reach the broker (the
        ``collect`` command). With one, it waits until the subscriptions are confirmed and
        raises TransportError if they are not within ``timeout`` seconds (the demo, tests).
        """
        if self._thread is not None:
            return self
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self._writer = threading.Thread(target=self._write_loop, name="edgefleet-collector-writer", daemon=True)
        self._writer.start()
        self._thread = threading.Thread(target=self._run, name="edgefleet-collector", daemon=True)
        self._thread.start()
        if timeout is not None and not self._subscribed.wait(timeout):
            self.stop()
            raise TransportError(
                f"the collector could not subscribe at the MQTT broker at {self.broker} within {timeout:g}s; "
                "start one with `edgefleet broker`, or point --broker at yours"
            )
        return self

    def stop(self) -> None:
        """Disconnect and end the threads; messages already received are stored."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._client.disconnect()  # also ends a reconnect wait: loop_forever returns
        thread.join(10)
        self._subscribed.clear()
        writer, self._writer = self._writer, None
        if writer is not None and writer.is_alive():  # a dead writer would never make room in the queue
            self._queue.put(_STOP)
            writer.join(30)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def check(self) -> None:
        """Raise the error that ended the network thread, if one did."""
        if self._failure is not None:
            raise self._failure

    def wait_for(self, predicate: Callable[[], bool], timeout: float, *, interval: float = 0.05) -> bool:
        """Poll ``predicate`` until it is true (returns True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    # --- the network thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._client.loop_forever(retry_first_connection=True)
        except Exception as exc:  # not in a loop: the thread ends here and check() re-raises it to the owner
            self._failure = exc
            self.log.error("collector stopped: %s: %s", type(exc).__name__, exc)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.log.warning("the MQTT broker at %s refused the collector: %s", self.broker, reason)
            return
        shared = f" (shared in group {self.shared_group})" if self.shared_group else ""
        self.log.info("connected to %s; subscribing to all devices%s", self.broker, shared)
        client.subscribe([(t, 1) for t in self.topics])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.log.warning("cannot reach the MQTT broker at %s; retrying", self.broker)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._subscribed.clear()
        if reason.is_failure:
            self.log.warning("lost the MQTT broker at %s (%s); reconnecting", self.broker, reason)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self.log.error("the MQTT broker at %s refused a subscription: %s", self.broker, ", ".join(refused))
            return
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            self._ack([message])  # a retained message being cleared
            return
        if self._failure is not None:  # the writer died: unacknowledged, the broker keeps it (check() says why)
            self._count(Counter(store_errors=1))
            return
        try:
            self._queue.put((_validate(message.topic, bytes(message.payload)), message))
        except MessageError as exc:
            self._count(Counter(rejected=1))
            self.log.warning("rejected %s", exc)
            self._ack([message])  # redelivering it would not make it valid

    def _ack(self, messages: list[mqtt.MQTTMessage]) -> None:
        for m in messages:
            if m.qos > 0:
                self._client.ack(m.mid, m.qos)

    # --- the writer thread ---------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    return
                batch = [first]
                # Take what has queued meanwhile: a commit costs about as much as a hundred rows, so under
                # load fewer, larger transactions leave more of the CPU to receiving. No lingering for more:
                # the broker sends no more than its in-flight window until this batch is acknowledged.
                while len(batch) < BATCH_MAX:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        self._write(batch)
                        return
                    batch.append(item)
                self._write(batch)
        except Exception as exc:  # not in a loop: the thread ends here and check() re-raises it to the owner
            self._failure = exc
            self.log.error("collector writer stopped: %s: %s", type(exc).__name__, exc)

    def _write(self, batch: list[tuple[Stored, mqtt.MQTTMessage]]) -> None:
        crash_point("collector:storing")
        try:
            self.store.record_many([stored for stored, _ in batch])
        except self._store_errors:
            # Find the culprit(s): store one by one, so one bad row does not lose the others. A row
            # the database refuses is acknowledged all the same: redelivery would only fail again.
            counts: Counter[str] = Counter()
            for stored, _ in batch:
                try:
                    self.store.record_many([stored])
                except self._store_errors as exc:
                    counts["store_errors"] += 1
                    self.log.error("could not store the %s of %s: %s", _counter(stored)[:-1], stored.device_id, exc)
                else:
                    counts[_counter(stored)] += 1
            self._count(counts)
        else:
            self._count(Counter(_counter(stored) for stored, _ in batch))
        self._ack([message for _, message in batch])

    def _count(self, counts: Counter[str]) -> None:
        with self._stats_lock:
            self._stats = replace(self._stats, **{k: getattr(self._stats, k) + n for k, n in counts.items()})


Stored = DeviceState | DeploymentEvent | BenchmarkReport


def _counter(message: Stored) -> str:
    """The name of the stats counter a stored message bumps."""
    if isinstance(message, DeviceState):
        return "states"
    return "events" if isinstance(message, DeploymentEvent) else "benchmarks"


def _validate(topic: str, payload: bytes) -> Stored:
    """Parse one message and check that it comes from the device its topic names; MessageError if not."""
    try:
        device = topics.device_of(topic)
    except ValueError as exc:
        raise MessageError(str(exc), topic=topic) from None
    kind = topic.rsplit("/", 1)[-1]
    message: Stored
    if kind == "state":
        message = parse(DeviceState, payload, topic=topic)
    elif kind == "telemetry":
        message = parse(TELEMETRY, payload, topic=topic)
    elif kind == "events":
        message = parse(DeploymentEvent, payload, topic=topic)
    else:
        raise MessageError("not a topic the collector subscribes to", topic=topic)
    _check_device(message.device_id, device, topic)
    return message


def _check_device(claimed: str, device: str, topic: str) -> None:
    # A device publishing as another would corrupt that one's history; the topic is what ACLs protect.
    if claimed != device:
        raise MessageError(f"device_id {claimed!r} does not match the topic's device {device!r}", topic=topic)
