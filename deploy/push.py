"""Pushing a package to devices: its chunks and a deployment, retained on the broker.

A push is two kinds of retained QoS 1 messages (``docs/protocol.md`` has the details):

1. every ``chunk_size`` bytes of the package file on ``edgefleet/v1/packages/{sha256}/chunks/{i}``;
2. once the broker has acknowledged every chunk, a ``Deployment`` naming the package, its
   hashes and its profile on the device's deploy topic, or on the group's deploy topic for the
   package's profile (a group of mixed hardware gets one package per profile).

Because both are retained, the broker holds everything a device needs: a device that is offline
now installs the package when it reconnects, and nothing on the fleet side has to stay running.
The order matters: a device that sees a deployment can always find its chunks.

Devices report progress as ``DeploymentEvent`` messages, which are not retained; to see them,
subscribe before pushing, which ``DeploymentWatcher`` does:

    with DeploymentWatcher(broker) as watcher:
        deployment = push_package(path, broker=broker, device="pi-kitchen")
        outcomes = watcher.wait(deployment.deployment_id, ["pi-kitchen"], timeout=60)

A rollback (``rollback_key``) is a deployment that carries a ``RollbackGrant`` signed with that
key: devices refuse a version older than the newest they have installed unless such a signed
permission, bound to this device or group, deployment and package, comes with it.

Errors: ``PushError`` (a ``TransportError``) when the broker is unreachable, refuses the
connection or stops acknowledging; ``PackageError`` from ``read_manifest`` for a file that is
not a package; ``ValueError`` for a bad device or group id or chunk size.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent import keys, topics
from edgefleet.agent.errors import IntegrityError, MessageError
from edgefleet.agent.messages import (
    Deployment,
    DeploymentEvent,
    DeviceState,
    KeyRevocation,
    PackageRef,
    Phase,
    RollbackGrant,
    parse,
)
from edgefleet.agent.package import Manifest, read_manifest
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.link import BrokerLink

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 256 * 1024
_TERMINAL = frozenset({Phase.DONE, Phase.FAILED})


def new_deployment_id() -> str:
    """A short random id; unique enough to tell one push's events from another's."""
    return uuid.uuid4().hex[:12]


def describe_package(package: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Manifest, PackageRef]:
    """Read the manifest and hash the file whole and per chunk, without connecting anywhere."""
    if chunk_size <= 0:
        raise ValueError(f"chunk size must be positive, not {chunk_size}")
    manifest = read_manifest(Path(package))
    whole = hashlib.sha256()
    chunk_hashes: list[str] = []
    size = 0
    for chunk in _read_chunks(Path(package), chunk_size):
        whole.update(chunk)
        chunk_hashes.append(hashlib.sha256(chunk).hexdigest())
        size += len(chunk)
    ref = PackageRef(
        id=manifest.package_id, sha256=whole.hexdigest(), size=size, chunk_size=chunk_size, chunk_sha256=chunk_hashes
    )
    return manifest, ref


def push_package(
    package: Path,
    *,
    broker: BrokerURL,
    device: str | None = None,
    group: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    deployment_id: str | None = None,
    timeout: float = 30,
    url: str | None = None,
    rollback_key: Ed25519PrivateKey | None = None,
) -> Deployment:
    """Publish ``package`` for one device or one group; returns the deployment as published.

    With ``url`` (where the same file is served over http(s), e.g. object storage or a CDN), the
    deployment carries the URL and no chunks are published: devices download the file from there,
    still checking every chunk and the whole file against the hashes in the deployment.

    ``timeout`` bounds connecting and each wait for the broker's acknowledgement, not the whole
    upload, so a large package on a slow link is fine as long as the broker keeps answering.

    With ``rollback_key`` (a private key the devices trust), the deployment is an explicit, signed
    rollback: devices install it even if it is older than what they have had.
    """
    _check_target(device, group)  # before hashing what may be a large file
    manifest, ref = describe_package(package, chunk_size)
    if url is not None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"package URL must start with http:// or https://, not {url!r}")
        ref = ref.model_copy(update={"url": url})
    deploy_topic = _deploy_topic(device, group, manifest.target.profile)
    deployment = Deployment(
        deployment_id=deployment_id or new_deployment_id(), package=ref, profile=manifest.target.profile
    )
    if rollback_key is not None:
        deployment = sign_rollback(deployment, manifest, rollback_key, device=device, group=group)
    with BrokerLink(broker, timeout=timeout) as link:
        if url is None:
            link.publish(chunk_messages(Path(package), ref), total=ref.chunk_count())
        # Only now announce it: a device that sees the deployment must find every chunk retained.
        link.publish([(deploy_topic, deployment.to_bytes())], total=1, what="the deployment")
    log.info(
        "pushed %s (%d bytes, %d chunks%s) to %s as deployment %s",
        ref.id, ref.size, ref.chunk_count(), f" at {url}" if url else "", deploy_topic, deployment.deployment_id,
    )
    return deployment


def sign_rollback(deployment: Deployment, manifest: Manifest, key: Ed25519PrivateKey, *,
                  device: str | None = None, group: str | None = None) -> Deployment:
    """``deployment`` with a ``RollbackGrant`` for ``device`` or ``group``, signed by ``key``."""
    _check_target(device, group)
    unsigned = RollbackGrant(device=device, group=group, deployment_id=deployment.deployment_id,
                             issued_at=deployment.issued_at, package_id=manifest.package_id,
                             sha256=deployment.package.sha256, version=manifest.version,
                             signer="0" * 16, signature="")
    signer, signature = keys.sign_statement(key, unsigned.statement())
    grant = unsigned.model_copy(update={"signer": signer, "signature": signature})
    return deployment.model_copy(update={"rollback": grant})


def revoke_key(broker: BrokerURL, key_id: str, signing_key: Ed25519PrivateKey, *, reason: str = "",
               timeout: float = 30) -> KeyRevocation:
    """Publish a signed, retained revocation of ``key_id`` for every agent; returns it as published.

    ``signing_key`` must be trusted by the devices and not revoked itself (it may be ``key_id``'s
    own key). Agents keep the revocation on disk: it cannot be taken back.
    """
    if not keys.KEY_ID.match(key_id):
        raise ValueError(f"{key_id!r} is not a key id (16 hex digits, as `edgefleet keys list` shows)")
    unsigned = KeyRevocation(key_id=key_id, reason=reason, signer="0" * 16, signature="")
    signer, signature = keys.sign_statement(signing_key, unsigned.statement())
    revocation = unsigned.model_copy(update={"signer": signer, "signature": signature})
    with BrokerLink(broker, timeout=timeout) as link:
        link.publish([(topics.key_revocation(key_id), revocation.to_bytes())], total=1, what="the revocation")
    log.info("published the revocation of key %s, signed by key %s", key_id, signer)
    return revocation


def clear_deployment(
    broker: BrokerURL,
    *,
    device: str | None = None,
    group: str | None = None,
    profile: str | None = None,
    timeout: float = 30,
) -> None:
    """Remove the retained deployment of a device, or of a group's members with ``profile``.

    Devices keep what they installed; they just stop being told to install it.
    """
    if group is not None and profile is None:
        raise ValueError("a group's deployments are per profile: name the profile to clear")
    topic = _deploy_topic(device, group, profile or "")
    with BrokerLink(broker, timeout=timeout) as link:
        link.publish([(topic, b"")], total=1, what="the deployment")


def clear_package(broker: BrokerURL, package: PackageRef, *, timeout: float = 30) -> None:
    """Remove a package's retained chunks from the broker, freeing its memory."""
    messages = ((topics.package_chunk(package.sha256, i), b"") for i in range(package.chunk_count()))
    with BrokerLink(broker, timeout=timeout) as link:
        link.publish(messages, total=package.chunk_count())


# --- following a deployment --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceOutcome:
    """Where one device got to with one deployment.

    ``phase`` is the last phase the device reported, ``None`` if it said nothing (offline, a
    different profile, or not running an agent).
    """

    device: str
    phase: Phase | None = None
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in _TERMINAL

    @property
    def ok(self) -> bool:
        return self.phase is Phase.DONE


class DeploymentWatcher:
    """Subscribes to every device's events and remembers them, so no event is missed between
    ``push_package`` and ``wait`` (events are not retained). Use as a context manager."""

    def __init__(self, broker: BrokerURL, *, timeout: float = 30) -> None:
        self.broker = broker
        self.timeout = timeout
        self._link: BrokerLink | None = None
        self._cond = threading.Condition()
        self._events: list[DeploymentEvent] = []

    def start(self) -> DeploymentWatcher:
        """Connect and subscribe; returns once the broker has confirmed the subscription."""
        link = BrokerLink(self.broker, timeout=self.timeout, subscribe=[topics.ALL_EVENTS], on_message=self._on_message)
        link.open()
        self._link = link
        return self

    def stop(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def __enter__(self) -> DeploymentWatcher:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        try:
            event = parse(DeploymentEvent, bytes(message.payload), topic=message.topic)
        except MessageError as exc:
            log.warning("ignoring %s", exc)
            return
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def wait(
        self,
        deployment_id: str,
        devices: Iterable[str],
        timeout: float,
        *,
        on_event: Callable[[DeploymentEvent], None] | None = None,
    ) -> dict[str, DeviceOutcome]:
        """Wait until every device in ``devices`` reports done or failed, or ``timeout`` passes.

        Returns an outcome per device, finished or not. ``on_event`` sees each event of this
        deployment from those devices, in this thread, as it arrives.
        """
        outcomes = {d: DeviceOutcome(d) for d in devices}
        deadline = time.monotonic() + timeout
        seen = 0
        while not all(o.finished for o in outcomes.values()):
            with self._cond:
                while seen == len(self._events):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return outcomes
                    self._cond.wait(remaining)
                fresh, seen = self._events[seen:], len(self._events)
            for event in fresh:
                current = outcomes.get(event.device_id)
                if event.deployment_id != deployment_id or current is None:
                    continue
                if on_event is not None:
                    on_event(event)
                if not current.finished:  # a late duplicate must not undo done or failed
                    outcomes[event.device_id] = DeviceOutcome(event.device_id, event.phase, event.error)
        return outcomes


def wait_for_devices(
    broker: BrokerURL,
    deployment_id: str,
    devices: Iterable[str],
    timeout: float,
    *,
    on_event: Callable[[DeploymentEvent], None] | None = None,
) -> dict[str, DeviceOutcome]:
    """Subscribe now and wait for ``devices`` to finish ``deployment_id``.

    Events sent before this call are lost; when devices may be quicker than you, open a
    ``DeploymentWatcher`` before ``push_package`` instead.
    """
    with DeploymentWatcher(broker) as watcher:
        return watcher.wait(deployment_id, devices, timeout, on_event=on_event)


def fleet_states(broker: BrokerURL, *, settle: float = 0.5, timeout: float = 5.0) -> list[DeviceState]:
    """Every device's retained state, as the broker holds it now.

    MQTT does not mark the end of the retained messages, so this collects until ``settle``
    seconds pass without one, or ``timeout`` in all.
    """
    states: dict[str, DeviceState] = {}
    last = [time.monotonic()]

    def on_message(message: mqtt.MQTTMessage) -> None:
        last[0] = time.monotonic()
        if not message.payload:
            return
        try:
            state = parse(DeviceState, bytes(message.payload), topic=message.topic)
        except MessageError as exc:
            log.warning("ignoring %s", exc)
            return
        states[state.device_id] = state

    with BrokerLink(broker, timeout=timeout, subscribe=[topics.ALL_STATES], on_message=on_message):
        deadline = time.monotonic() + timeout
        last[0] = time.monotonic()
        while time.monotonic() < min(deadline, last[0] + settle):
            time.sleep(0.05)
    return sorted(states.values(), key=lambda s: s.device_id)


# --- internals ---------------------------------------------------------------------------


def _check_target(device: str | None, group: str | None) -> None:
    if (device is None) == (group is None):
        raise ValueError("name exactly one target: a device or a group")
    if device is not None:
        topics.check_id(device, "device id")
    else:
        topics.check_id(group or "", "group name")


def _deploy_topic(device: str | None, group: str | None, profile: str) -> str:
    _check_target(device, group)
    if device is not None:
        return topics.device_deploy(device)
    return topics.group_deploy(group or "", topics.check_id(profile, "profile"))


def _read_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


def chunk_messages(path: Path, ref: PackageRef) -> Iterator[tuple[str, bytes]]:
    count = 0
    for i, chunk in enumerate(_read_chunks(path, ref.chunk_size)):
        # Hashed twice (here and in describe_package) so a file rewritten mid-push is caught, not shipped.
        if i >= ref.chunk_count() or hashlib.sha256(chunk).hexdigest() != ref.chunk_sha256[i]:
            raise IntegrityError(f"{path} changed while it was being pushed; push it again", path=str(path))
        count += 1
        yield topics.package_chunk(ref.sha256, i), chunk
    if count != ref.chunk_count():
        raise IntegrityError(f"{path} changed while it was being pushed; push it again", path=str(path))


