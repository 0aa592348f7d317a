"""MQTT topic layout: the one place that spells a topic.

Everything lives under ``edgefleet/v1/``; the version segment lets a fleet run two protocol
versions side by side during an upgrade.

    edgefleet/v1/devices/{device}/state        device -> fleet  retained; last will says "offline"
    edgefleet/v1/devices/{device}/telemetry    device -> fleet  benchmark reports, QoS 1
    edgefleet/v1/devices/{device}/system       device -> fleet  periodic health samples (SystemSample), QoS 1
    edgefleet/v1/devices/{device}/events       device -> fleet  deployment progress and refusals, QoS 1
    edgefleet/v1/devices/{device}/deploy       fleet -> device  retained: the deployment this device should run
    edgefleet/v1/devices/{device}/benchmark    fleet -> device  not retained: benchmark a package without installing it
    edgefleet/v1/groups/{group}/{profile}/deploy
                                               fleet -> devices retained: the same, for the members of a group
                                                                with that profile (packages are per profile)
    edgefleet/v1/packages/{sha256}/chunks/{i}  fleet -> device  retained: chunk i of a package, raw bytes
    edgefleet/v1/trust/revoked/{key_id}        fleet -> devices retained: a signed KeyRevocation of that key

Deployments and package chunks are retained so that the broker itself holds what a device needs:
a device that was offline during ``edgefleet push`` gets its deployment when it comes back, and a
device that lost a download resumes by subscribing again, with no fleet server in the loop.
"""

from __future__ import annotations

import re

ROOT = "edgefleet/v1"

# Device and group ids become topic levels: forbid the MQTT wildcards and separators.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_id(value: str, what: str = "device id") -> str:
    """Return ``value`` if it can be a topic level, else raise ValueError saying why."""
    if not _ID.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def state(device: str) -> str:
    return f"{ROOT}/devices/{device}/state"


def telemetry(device: str) -> str:
    return f"{ROOT}/devices/{device}/telemetry"


def system(device: str) -> str:
    return f"{ROOT}/devices/{device}/system"


def events(device: str) -> str:
    return f"{ROOT}/devices/{device}/events"


def device_deploy(device: str) -> str:
    return f"{ROOT}/devices/{device}/deploy"


def benchmark_requests(device: str) -> str:
    return f"{ROOT}/devices/{device}/benchmark"


def group_deploy(group: str, profile: str) -> str:
    return f"{ROOT}/groups/{group}/{profile}/deploy"


def package_chunks(sha256: str) -> str:
    """The wildcard a device subscribes to for all chunks of one package."""
    return f"{ROOT}/packages/{sha256}/chunks/+"


def package_chunk(sha256: str, index: int) -> str:
    return f"{ROOT}/packages/{sha256}/chunks/{index}"


def chunk_index(topic: str) -> int:
    """The chunk number at the end of a package chunk topic."""
    return int(topic.rsplit("/", 1)[1])


def key_revocation(key_id: str) -> str:
    return f"{ROOT}/trust/revoked/{key_id}"


# What every agent subscribes to, to hear of revoked signing keys.
ALL_REVOCATIONS = f"{ROOT}/trust/revoked/+"

# What the fleet side subscribes to in order to see every device.
ALL_STATES = f"{ROOT}/devices/+/state"
ALL_TELEMETRY = f"{ROOT}/devices/+/telemetry"
ALL_EVENTS = f"{ROOT}/devices/+/events"
ALL_SYSTEM = f"{ROOT}/devices/+/system"


def device_of(topic: str) -> str:
    """The device id in a ``edgefleet/v1/devices/{device}/...`` topic."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[2] != "devices":
        raise ValueError(f"not a device topic: {topic!r}")
    return parts[3]

