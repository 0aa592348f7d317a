"""A short-lived connection to the broker for fleet commands: connect, publish with acknowledgements, listen.

``BrokerLink`` is what ``push``, ``benchmark`` and the watchers share: it connects (waiting for
the CONNACK and any SUBACK), publishes QoS 1 messages keeping a bounded window in flight, and
turns every way the broker can fail into a ``PushError`` that names the broker and what to do.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.agent.errors import TransportError
from edgefleet.agent.transport import (
    BrokerURL,
    closed_before_connack,
    describe_connect_error,
    make_client,
)

log = logging.getLogger(__name__)

# QoS 1 messages in flight before we wait for acknowledgements: bounds memory for big packages
# while keeping the pipe full (make_client lets paho keep 64 in flight).
_WINDOW = 64


class PushError(TransportError):
    """The broker was unreachable, refused the connection, or did not acknowledge in time."""

    def __init__(self, message: str, *, broker: BrokerURL) -> None:
        super().__init__(message)
        self.broker = broker


class BrokerLink:
    """A paho client, connected (CONNACK received) with its network loop in a thread.

    Subscriptions are made in on_connect so they come back after paho reconnects.
    """

    def __init__(
        self,
        broker: BrokerURL,
        *,
        timeout: float,
        subscribe: Sequence[str] = (),
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        self.broker = broker
        self.timeout = timeout
        self._subscribe = list(subscribe)
        self._on_message = on_message
        self._client = make_client(broker)
        self._cond = threading.Condition()
        self._connack: Any = None
        self._suback = False
        self._acked: set[int] = set()
        self._disconnect_reason = ""
        self._closed_early = False  # the broker hung up before its CONNACK

    # paho callbacks, on its network thread
    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure and self._subscribe:
            client.subscribe([(t, 1) for t in self._subscribe])
        with self._cond:
            self._connack = reason
            self._cond.notify_all()

    def _subscribed(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        with self._cond:
            self._suback = True
            self._cond.notify_all()

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._disconnect_reason = str(reason)
        with self._cond:
            if self._connack is None:
                self._closed_early = True
                self._cond.notify_all()
        log.debug("disconnected from %s: %s", self.broker, reason)

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(message)

    def open(self) -> BrokerLink:
        c = self._client
        c.on_connect, c.on_subscribe, c.on_publish = self._connected, self._subscribed, self._published
        c.on_disconnect, c.on_message = self._disconnected, self._message
        c.connect_timeout = self.timeout
        try:
            c.connect(self.broker.host, self.broker.port, keepalive=30)
        except ssl.SSLError as exc:  # the broker's certificate failed verification, or the handshake failed
            raise self._error(describe_connect_error(exc, self.broker), hint=False) from None
        except OSError as exc:  # refused, unresolvable host, socket timeout
            raise self._error(f"cannot reach the MQTT broker at {self.broker} ({exc.strerror or exc})") from None
        c.loop_start()
        try:
            with self._cond:
                answered = self._cond.wait_for(lambda: self._connack is not None or self._closed_early, self.timeout)
                if not answered:
                    raise self._error(f"the MQTT broker at {self.broker} did not answer within {self.timeout:g}s")
                if self._connack is None:
                    raise self._error(closed_before_connack(self.broker), hint=False)
                if self._connack.is_failure:
                    raise self._error(
                        f"the MQTT broker at {self.broker} refused the connection: {self._connack}; check the user "
                        "name and password (--password-file) or the client certificate (--tls-cert)",
                        hint=False,
                    )
                if self._subscribe and not self._cond.wait_for(lambda: self._suback, self.timeout):
                    raise self._error(f"the MQTT broker at {self.broker} did not confirm the subscription within {self.timeout:g}s")
        except PushError:
            self.close()
            raise
        return self

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> BrokerLink:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def publish(self, messages: Iterable[tuple[str, bytes]], *, total: int, what: str = "chunk", retain: bool = True) -> None:
        """Publish at QoS 1 (retained unless told otherwise); return once the broker has acknowledged every message."""
        pending: deque[tuple[int, int]] = deque()  # (message number, mid)
        for n, (topic, payload) in enumerate(messages):
            # rc may say "no connection" mid-reconnect; paho still queues a QoS 1 message and sends it later.
            info = self._client.publish(topic, payload, qos=1, retain=retain)
            pending.append((n, info.mid))
            while len(pending) >= _WINDOW:
                self._wait_ack(*pending.popleft(), total=total, what=what)
        while pending:
            self._wait_ack(*pending.popleft(), total=total, what=what)

    def _wait_ack(self, n: int, mid: int, *, total: int, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._acked, self.timeout):
                which = f"{what} {n + 1}/{total}" if total > 1 else what
                lost = f" (connection lost: {self._disconnect_reason})" if self._disconnect_reason else ""
                raise self._error(
                    f"the MQTT broker at {self.broker} did not acknowledge {which} within {self.timeout:g}s{lost}",
                    hint=False,
                )
            self._acked.discard(mid)

    def _error(self, message: str, *, hint: bool = True) -> PushError:
        if hint:  # the usual cause on a first run: no broker yet, or another one than intended
            message += "; start one with `edgefleet broker`, or point --broker (or EDGEFLEET_BROKER) at yours"
        return PushError(message, broker=self.broker)
