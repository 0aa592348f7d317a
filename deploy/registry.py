"""The device registry: which devices the fleet knows, from their retained state.

Every agent keeps a retained ``DeviceState`` on its state topic; the collector upserts it into
the store's ``devices`` table, so the registry is a query over the store, not a second source of
truth. This module selects devices (by id, group, profile, status) for ``edgefleet devices`` and
for rollout targets, and turns rows into records for the table and ``--json``.

Labels (``--label k=v``, ``edgefleet.agent.labels``) come from each device's state: a filter with
several labels matches the devices that have all of them. States from agents older than labels
carry none, so such devices match no label filter.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.labels import check_labels, format_labels
from edgefleet.agent.labels import matches as labels_match
from edgefleet.deploy.store import DeviceRow
from edgefleet.deploy.tables import Column, render_table

STATUSES = ("online", "offline")


class RegistryError(EdgefleetError):
    """A selection the registry cannot answer: unknown devices, labels, nothing matching."""


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    """Which devices to list or target; every field set must match (None matches anything)."""

    profile: str | None = None
    group: str | None = None
    status: str | None = None
    labels: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")
        if self.labels:
            check_labels(self.labels)

    def matches(self, device: DeviceRow) -> bool:
        return (
            (self.profile is None or device.profile == self.profile)
            and (self.group is None or self.group in device.groups)
            and (self.status is None or device.status == self.status)
            and (not self.labels or labels_match(device.labels, self.labels))
        )


def select_devices(devices: Iterable[DeviceRow], where: DeviceFilter = DeviceFilter()) -> list[DeviceRow]:
    """The devices matching ``where``, by id."""
    return sorted((d for d in devices if where.matches(d)), key=lambda d: d.device_id)


def find_devices(devices: Iterable[DeviceRow], ids: Sequence[str]) -> list[DeviceRow]:
    """The devices named by ``ids``, in that order; ``RegistryError`` names any the registry lacks."""
    known = {d.device_id: d for d in devices}
    missing = [i for i in ids if i not in known]
    if missing:
        raise RegistryError(
            f"unknown device(s): {', '.join(missing)}; the registry knows the devices whose state the collector "
            "has stored (see `edgefleet devices`)"
        )
    return [known[i] for i in dict.fromkeys(ids)]


def humanize_age(seconds: float) -> str:
    """``42`` -> ``42s ago``; minutes, hours, then days."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h ago"
    return f"{seconds // 86400:.0f}d ago"


def device_records(devices: Sequence[DeviceRow], *, now: float | None = None) -> list[dict[str, Any]]:
    """One plain dict per device, ready for JSON; ``last_seen`` is a Unix time, ``age_s`` its age."""
    now = time.time() if now is None else now
    return [
        {
            "device": d.device_id,
            "profile": d.profile,
            "simulated": d.simulated,
            "status": d.status,
            "groups": list(d.groups),
            "labels": dict(d.labels),
            "package_id": d.package_id,
            "model": f"{d.model_name}@{d.model_version}" if d.model_name else None,
            "runtime": d.runtime,
            "agent_version": d.agent_version,
            "runtimes": dict(d.runtimes),
            "last_seen": d.last_seen,
            "age_s": round(max(0.0, now - d.last_seen), 3),
        }
        for d in devices
    ]


DEVICE_COLUMNS = (
    Column("DEVICE"),
    Column("PROFILE"),
    Column("STATUS"),
    Column("GROUPS"),
    Column("LABELS"),
    Column("MODEL"),
    Column("AGENT"),
    Column("RUNTIMES"),
    Column("LAST SEEN", "right"),
)


def render_devices(records: Sequence[dict[str, Any]]) -> str:
    """The registry table for records from ``device_records``."""
    rows = [
        (
            r["device"],
            (r["profile"] or "-") + (" (sim)" if r["simulated"] else ""),
            r["status"],
            ",".join(r["groups"]) or None,
            format_labels(r["labels"]) or None,
            r["model"],
            r["agent_version"] or None,
            ", ".join(v if k in v else f"{k} {v}" for k, v in sorted(r["runtimes"].items())) or None,
            humanize_age(r["age_s"]),
        )
        for r in records
    ]
    return render_table(DEVICE_COLUMNS, rows)
