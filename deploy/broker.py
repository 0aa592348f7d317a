"""An MQTT broker inside the edgefleet process, for a first run with nothing else installed.

``edgefleet broker`` and the demo use it so that compiling, pushing and collecting telemetry
work on a laptop without Mosquitto. It is amqtt's broker (pure Python, MQTT 3.1.1) running on
its own asyncio loop in a daemon thread, so synchronous code can start it, use it through paho
like any other broker, and stop it:

    with EmbeddedBroker(port=0) as broker:
        push_package(path, broker=broker.url, device="pi-kitchen")

It keeps retained messages in memory only: stopping it forgets every deployment and package.
Production fleets use Mosquitto or any other MQTT 3.1.1/5 broker with persistence,
authentication and TLS; nothing in edgefleet depends on this one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any

import click

from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.transport import BrokerURL

log = logging.getLogger(__name__)

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


class BrokerStartError(EdgefleetError):
    """The embedded broker could not start; ``host`` and ``port`` say where it tried to listen."""

    def __init__(self, message: str, *, host: str, port: int) -> None:
        super().__init__(message)
        self.host = host
        self.port = port


class PortInUseError(BrokerStartError):
    """Something (often a Mosquitto already running) listens on the port."""

    def __init__(self, *, host: str, port: int) -> None:
        super().__init__(
            f"port {port} is in use — is Mosquitto already running? use --port or point --broker at it",
            host=host,
            port=port,
        )


class EmbeddedBroker:
    """amqtt's broker on a private event loop in a daemon thread.

    ``port=0`` picks a free port; ``url`` then says which. Anonymous clients are allowed: it
    listens on 127.0.0.1 by default and is meant for one machine.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 0-65535")
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None  # amqtt.broker.Broker, created on the broker's own loop

    @property
    def url(self) -> BrokerURL:
        """Where a client on this machine connects (a wildcard listen address becomes loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return BrokerURL(host=host, port=self.port)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EmbeddedBroker:
        """Listen and serve; returns once the broker accepts connections. Raises BrokerStartError."""
        if self.running:
            return self
        _quiet_amqtt()
        if self.port == 0:
            self.port = _free_port(self.host)
        else:
            # amqtt logs a traceback before raising when bind fails; checking first gives one clean error.
            _check_port_free(self.host, self.port)
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            try:
                self._broker = _broker_class()(_config(self.host, self.port), loop=loop)
                await self._broker.start()
            except Exception as exc:  # amqtt wraps bind and plugin failures in BrokerError; report any to start()
                failure.append(exc)
            finally:
                ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            task = loop.create_task(serve())  # referenced until the loop ends: the loop keeps only weak ones
            try:
                loop.run_forever()
            finally:
                task.cancel()
                loop.close()

        thread = threading.Thread(target=run, name=f"edgefleet-broker-{self.port}", daemon=True)
        thread.start()
        if not ready.wait(_START_TIMEOUT):
            loop.call_soon_threadsafe(loop.stop)
            raise BrokerStartError(f"the embedded broker did not start within {_START_TIMEOUT:.0f}s", host=self.host, port=self.port)
        if failure:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT)
            raise _start_error(failure[0], self.host, self.port)
        self._loop, self._thread = loop, thread
        log.info("embedded MQTT broker listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Close every connection and the listener; retained messages are forgotten."""
        loop, thread, broker = self._loop, self._thread, self._broker
        if loop is None or thread is None:
            return
        self._loop = self._thread = self._broker = None
        try:
            asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(_STOP_TIMEOUT)
        except FutureTimeout:
            log.warning("the embedded broker did not shut down within %.0fs; abandoning its thread", _STOP_TIMEOUT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT)

    def serve_forever(self) -> None:
        """Block until interrupted (KeyboardInterrupt propagates) or the broker's thread ends."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _broker_class() -> type[Any]:
    """amqtt's Broker with retained messages sent only to the clients that subscribed to them.

    amqtt 0.12 sends a connecting client the retained messages matching *every* client's
    subscriptions (it loops over the broker-wide subscription table, meant for the client's own
    resumed session). A device would then receive other devices' deployments and other packages'
    chunks. The fix keeps amqtt's own delivery, skipping filters the client has not subscribed to;
    tests/test_deploy_broker.py checks the behaviour, so a future amqtt that renames the method
    fails there rather than in a fleet.
    """
    # Imported late: only the fleet extras install amqtt.
    from amqtt.broker import Broker
    from amqtt.session import Session

    class _Broker(Broker):  # type: ignore[misc]  # amqtt ships no type information
        async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Session) -> None:
            subscribers = self._subscriptions.get(subscription[0], ())
            if any(s.client_id == session.client_id for s, _ in subscribers):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return _Broker


def _config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        # Only anonymous auth: amqtt's default plugin set also logs every packet and publishes $SYS topics.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _quiet_amqtt() -> None:
    # amqtt logs every connection at INFO; keep a level someone set on purpose (e.g. for debugging).
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # The same option asyncio's server uses, so a port in TIME_WAIT counts as free as it does for amqtt.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise _start_error(exc, host, port) from None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _start_error(exc: BaseException, host: str, port: int) -> BrokerStartError:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__
    if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
        return PortInUseError(host=host, port=port)
    if isinstance(cause, OSError):
        return BrokerStartError(f"cannot listen on {host}:{port}: {cause.strerror or cause}", host=host, port=port)
    return BrokerStartError(f"the embedded broker failed to start: {exc}", host=host, port=port)


# --- CLI ---------------------------------------------------------------------------------


@click.command("broker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; 0.0.0.0 lets devices on the network connect.")
@click.option("--port", default=1883, show_default=True, type=click.IntRange(0, 65535), help="TCP port (0 picks a free one).")
def broker_command(host: str, port: int) -> None:
    """Run a small MQTT broker in the foreground until Ctrl-C.

    For a quick start on one machine: nothing to install, anonymous access, retained messages
    kept in memory only (stopping it forgets deployments and packages). Production fleets use
    Mosquitto or any MQTT 3.1.1/5 broker, with authentication and TLS, and pass its address to
    every command with --broker.
    """
    broker = EmbeddedBroker(host, port)
    try:
        broker.start()
    except BrokerStartError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"MQTT broker listening on {broker.url} (Ctrl-C to stop)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo("anonymous clients are allowed: anyone who can reach this port can publish deployments", err=True)
    started = time.monotonic()
    try:
        broker.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    click.echo(f"broker stopped after {time.monotonic() - started:.0f}s")
