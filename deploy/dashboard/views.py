"""What each dashboard page shows, as plain JSON-ready dicts computed from the telemetry store.

Every page of the dashboard is one of these functions rendered through a template, and its JSON
twin is the same dict serialised, so the web layer (``edgefleet.deploy.dashboard.app``) holds no
logic and these functions are tested without HTTP. Times are Unix seconds; figures are numbers,
``None`` when there are none.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from edgefleet.deploy.registry import DeviceFilter, humanize_age, select_devices
from edgefleet.deploy.rollout import Plan
from edgefleet.deploy.store import BenchmarkRow, DeviceRow, TelemetryStore

SERIES_LIMIT = 500  # points per device chart: the newest reports
EVERY_DEVICE = DeviceFilter()
PAGE_SIZE = 100     # rows of the fleet table and of a rollout's devices per page: a page stays fast at any fleet size


def current_benchmarks(devices: Sequence[DeviceRow], latest: Sequence[BenchmarkRow]) -> dict[str, BenchmarkRow]:
    """Per device, the newest report of the package it runs now, else its newest report of any package."""
    by_device: dict[str, list[BenchmarkRow]] = defaultdict(list)
    for b in latest:
        by_device[b.device_id].append(b)
    installed = {d.device_id: d.package_id for d in devices}
    chosen: dict[str, BenchmarkRow] = {}
    for device_id, rows in by_device.items():
        running = [b for b in rows if b.package_id == installed.get(device_id)]
        chosen[device_id] = max(running or rows, key=lambda b: b.ts)
    return chosen


def _temperature(b: BenchmarkRow) -> float | None:
    """The hottest thermal zone after the timed runs, when the device reported one."""
    value = json.loads(b.report_json).get("temperature_after_c")
    return float(value) if value is not None else None


def _figures(b: BenchmarkRow | None) -> dict[str, Any]:
    keys = ("p50_ms", "p90_ms", "p99_ms", "throughput_ips", "power_w", "energy_mj")
    if b is None:
        return {**dict.fromkeys(keys), "benchmarked_at": None}
    return {k: getattr(b, k) for k in keys} | {"benchmarked_at": b.ts}


def _device_row(d: DeviceRow, current: BenchmarkRow | None, *, now: float) -> dict[str, Any]:
    """A device as the fleet table and the device page show it, with its current figures."""
    return {
        "device": d.device_id,
        "status": d.status,
        "profile": d.profile,
        "simulated": d.simulated,
        "groups": list(d.groups),
        "labels": dict(d.labels),
        "package_id": d.package_id,
        "model": _model(d),
        "model_version": d.model_version,
        "runtime": d.runtime,
        "agent_version": d.agent_version,
        "last_seen": d.last_seen,
        "last_seen_ago": humanize_age(now - d.last_seen),
        **_figures(current),
    }


def _model(d: DeviceRow) -> str | None:
    return f"{d.model_name}@{d.model_version}" if d.model_name else None


# --- the fleet ---------------------------------------------------------------------------


def page_of(total: int, offset: int, limit: int) -> dict[str, Any]:
    """Where a page is in a list of ``total`` rows; ``limit`` 0 means every row."""
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit cannot be negative")
    shown = total - min(offset, total) if limit == 0 else max(0, min(limit, total - offset))
    return {"offset": offset, "limit": limit, "total": total, "shown": shown,
            "first": offset + 1 if shown else 0, "last": offset + shown}


def fleet_view(store: TelemetryStore, *, now: float, where: DeviceFilter = EVERY_DEVICE, offset: int = 0,
               limit: int = PAGE_SIZE) -> dict[str, Any]:
    """The fleet table: one page of the devices matching ``where``, with status, model and current figures.

    ``counts`` and ``page.total`` cover every matching device; ``limit`` 0 lists them all.
    """
    matching = select_devices(store.devices(), where)
    page = page_of(len(matching), offset, limit)
    devices = matching[offset:offset + page["shown"]]
    current = current_benchmarks(devices, store.latest_benchmarks([d.device_id for d in devices]))
    rows = [_device_row(d, current.get(d.device_id), now=now) for d in devices]
    return {
        "now": now,
        "devices": rows,
        "counts": {
            "total": len(matching),
            "by_status": dict(sorted(Counter(d.status for d in matching).items())),
            "by_profile": dict(sorted(Counter(d.profile for d in matching).items())),
        },
        "page": page,
        "filter": {k: v for k, v in (("profile", where.profile), ("group", where.group), ("status", where.status),
                                     ("labels", dict(where.labels or {}))) if v},
    }


def device_view(store: TelemetryStore, device_id: str, *, now: float) -> dict[str, Any] | None:
    """One device: what it is, its figures over time (every package, oldest first), its recent events."""
    d = store.device(device_id)
    if d is None:
        return None
    history = store.device_benchmarks(device_id, limit=SERIES_LIMIT)
    newest = {b.package_id: b for b in history}  # oldest first, so the newest of each package wins
    current = current_benchmarks([d], list(newest.values()))
    return {
        "now": now,
        "device": {**_device_row(d, current.get(d.device_id), now=now), "runtimes": dict(d.runtimes)},
        "series": [
            {
                "ts": b.ts,
                "package_id": b.package_id,
                "p50_ms": b.p50_ms,
                "p90_ms": b.p90_ms,
                "p99_ms": b.p99_ms,
                "throughput_ips": b.throughput_ips,
                "power_w": b.power_w,
                "power_source": b.power_source,
                "energy_mj": b.energy_mj,
                "temperature_c": _temperature(b),
            }
            for b in history
        ],
        "events": [
            {"ts": e.ts, "deployment_id": e.deployment_id, "package_id": e.package_id, "phase": e.phase.value,
             "error": e.error}
            for e in store.device_events(device_id, limit=20)
        ],
    }


# --- models --------------------------------------------------------------------------------


def models_view(store: TelemetryStore) -> dict[str, Any]:
    """The latest benchmark of each package on each device, grouped by model, then package (one per profile).

    Each package carries the medians over its devices, so profiles compare at a glance; each model
    also lists all its devices' rows in one flat list.
    """
    groups: dict[str, dict[str, list[BenchmarkRow]]] = defaultdict(lambda: defaultdict(list))
    for b in store.latest_benchmarks():
        groups[f"{b.model_name}@{b.model_version}"][b.package_id].append(b)
    models = []
    for model in sorted(groups):
        packages = []
        for package_id in sorted(groups[model]):
            rows = sorted(groups[model][package_id], key=lambda b: b.device_id)
            packages.append({
                "package_id": package_id,
                "profile": rows[0].profile,
                "devices": [
                    {"device": b.device_id, "package_id": b.package_id, "profile": b.profile,
                     "simulated": b.simulated, "runtime": f"{b.runtime} {b.runtime_version}".strip(),
                     "power_source": b.power_source, "peak_rss_mb": b.peak_rss_mb, **_figures(b)}
                    for b in rows
                ],
                "device_count": len(rows),
                "median_p50_ms": _median([b.p50_ms for b in rows]),
                "median_p90_ms": _median([b.p90_ms for b in rows]),
                "median_throughput_ips": _median([b.throughput_ips for b in rows]),
                "median_power_w": _median([b.power_w for b in rows]),
                "median_energy_mj": _median([b.energy_mj for b in rows]),
            })
        models.append({
            "model": model,
            "packages": packages,
            "devices": [d for p in packages for d in p["devices"]],  # every package's, by profile then device
        })
    return {"models": models}


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


# --- rollouts ------------------------------------------------------------------------------


def rollouts_view(store: TelemetryStore) -> dict[str, Any]:
    """Every rollout, newest first, with the progress of each wave."""
    result = []
    for head in store.rollouts():
        view = rollout_view(store, head.rollout_id)
        if view is not None:
            result.append(view)
    return {"rollouts": result}


def rollout_view(store: TelemetryStore, rollout_id: str, *, offset: int = 0,
                 limit: int = PAGE_SIZE) -> dict[str, Any] | None:
    """One rollout: its plan and gates, each wave's device phases and progress, and a page of its devices."""
    found = store.rollout(rollout_id)
    if found is None:
        return None
    head, waves, devices = found
    page = page_of(len(devices), offset, limit)
    plan = Plan.from_json(head.plan_json)
    gates = plan.gates
    wave_rows = []
    for w in waves:
        members = [d for d in devices if d.wave == w.wave]
        phases = Counter(d.phase for d in members)
        finished = sum(n for phase, n in phases.items() if phase not in ("pending", "deploying", "rolling_back"))
        wave_rows.append({
            "wave": w.wave, "label": w.label, "status": w.status, "reason": w.reason,
            "started_at": w.started_at, "finished_at": w.finished_at,
            "devices": len(members), "finished": finished, "phases": dict(sorted(phases.items())),
            "progress": finished / len(members) if members else 1.0,
        })
    return {
        "rollout": head.rollout_id,
        "status": head.status,
        "reason": head.reason,
        "target": plan.target,
        "packages": [p.package_id for p in plan.packages],
        "created_at": head.created_at,
        "updated_at": head.updated_at,
        "next_wave_at": head.next_wave_at,
        "owner": head.owner,
        "request": head.request,
        "gates": {
            "max_failure_rate": gates.max_failure_rate,
            "max_p90_regression": gates.max_p90_regression,
            "max_energy_regression": gates.max_energy_regression,
        },
        "waves": wave_rows,
        "page": page,
        "devices": [
            {"device": d.device_id, "wave": d.wave, "profile": d.profile, "package_id": d.package_id,
             "previous_package_id": d.previous_package_id, "phase": d.phase, "attempt": d.attempt,
             "error": d.error, "baseline_p90_ms": d.baseline_p90_ms, "p90_ms": d.p90_ms,
             "baseline_energy_mj": d.baseline_energy_mj, "energy_mj": d.energy_mj}
            for d in devices[offset:offset + page["shown"]]
        ],
    }
