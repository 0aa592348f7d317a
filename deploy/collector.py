"""The collector: listens to every device and writes what it hears to the telemetry store.

It subscribes at QoS 1 to three wildcards (``docs/protocol.md``):

    edgefleet/v1/devices/+/state       DeviceState        -> store.record_state
    edgefleet/v1/devices/+/telemetry   BenchmarkReport    -> store.record_benchmark
    edgefleet/v1/devices/+/events      DeploymentEvent    -> store.record_event

Every payload is validated. A malformed one (not JSON, wrong schema, or a device id that does
not match its topic) is logged with its topic and counted in ``stats.rejected``; the collector
carries on, because one broken device must not blind the fleet. Empty payloads are retained
messages being deleted and are skipped.

With ``shared_group`` it subscribes to ``$share/GROUP/<topic>`` instead (MQTT shared
subscriptions, supported by Mosquitto 2, EMQX, HiveMQ and others over MQTT 3.1.1 and 5): the
broker hands each message to one collector of the group, so several collectors on several
machines share the load. A message redelivered to another member after a disconnect, or sent
twice by an agent's outbox, is still stored once: the store's inserts are idempotent.

paho's network loop runs in a thread of ours and reconnects with capped exponential backoff,
resubscribing each time (sessions are clean, so the broker forgets subscriptions). If the thread
dies of an unexpected error, ``check()`` and ``wait_for()`` raise it in the caller's thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from edgefleet.agent import topics
from edgefleet.agent.errors import MessageError, TransportError
from edgefleet.agent.messages import TELEMETRY, DeploymentEvent, DeviceState, parse
from edgefleet.agent.transport import BrokerURL, make_client
from edgefleet.deploy.store import TelemetryStore
from edgefleet.deploy.store_backends import database_errors

log = logging.getLogger(__name__)

SUBSCRIPTIONS = (topics.ALL_STATES, topics.ALL_TELEMETRY, topics.ALL_EVENTS)
DEFAULT_SHARED_GROUP = "edgefleet-collectors"
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
        self._client = make_client(broker, client_id)
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
        """Disconnect and end the thread; messages already received are stored."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._client.disconnect()  # also ends a reconnect wait: loop_forever returns
        thread.join(10)
        self._subscribed.clear()

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
            return  # a retained message being cleared
        topic = message.topic
        try:
            counter = self._record(topic, bytes(message.payload))
        except MessageError as exc:
            self._count("rejected")
            self.log.warning("rejected %s", exc)
        except self._store_errors as exc:
            self._count("store_errors")
            self.log.error("could not store the message on %s: %s", topic, exc)
        else:
            self._count(counter)

    def _record(self, topic: str, payload: bytes) -> str:
        """Validate and store one message; returns the name of the counter to bump."""
        try:
            device = topics.device_of(topic)
        except ValueError as exc:
            raise MessageError(str(exc), topic=topic) from None
        kind = topic.rsplit("/", 1)[-1]
        if kind == "state":
            state = parse(DeviceState, payload, topic=topic)
            _check_device(state.device_id, device, topic)
            self.store.record_state(state)
            return "states"
        if kind == "telemetry":
            report = parse(TELEMETRY, payload, topic=topic)
            _check_device(report.device_id, device, topic)
            self.store.record_benchmark(report)
            return "benchmarks"
        if kind == "events":
            event = parse(DeploymentEvent, payload, topic=topic)
            _check_device(event.device_id, device, topic)
            self.store.record_event(event)
            return "events"
        raise MessageError("not a topic the collector subscribes to", topic=topic)

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self._stats = replace(self._stats, **{name: getattr(self._stats, name) + 1})


def _check_device(claimed: str, device: str, topic: str) -> None:
    # A device publishing as another would corrupt that one's history; the topic is what ACLs protect.
    if claimed != device:
        raise MessageError(f"device_id {claimed!r} does not match the topic's device {device!r}", topic=topic)
