"""Broker addresses and MQTT clients, shared by the agent and the fleet side.

A broker is named by a URL: ``mqtt://host:1883`` or ``mqtts://user:pass@host:8883``. paho-mqtt
does the protocol; this module only turns a URL into a configured client, so every command
accepts the same ``--broker`` and means the same thing by it.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


@dataclass(frozen=True, slots=True)
class BrokerURL:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host; write it as mqtt://HOST:PORT")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"broker URL {url!r} has an invalid port") from None
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def make_client(url: BrokerURL, client_id: str | None = None, *, clean_start: bool = True) -> mqtt.Client:
    """A paho client (MQTT 3.1.1, callback API v2) configured for ``url``; not yet connected."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"edgefleet-{uuid.uuid4().hex[:12]}",
        clean_session=clean_start,
        protocol=mqtt.MQTTv311,
    )
    if url.username:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    # paho keeps at most this many QoS>0 messages in flight; chunked uploads need more than the default 20.
    client.max_inflight_messages_set(64)
    return client
