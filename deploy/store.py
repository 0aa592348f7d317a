"""The telemetry store: what the fleet has heard from its devices, in one SQLite file.

Three tables, filled by the collector from the messages of ``docs/protocol.md``:

    devices     one row per device, from its latest DeviceState (upserted)
    events      every DeploymentEvent: the history of each deployment on each device
    benchmarks  every BenchmarkReport: the figures the telemetry table shows, plus the full JSON

Writes are idempotent (QoS 1 delivers a message at least once, so duplicates are expected) and
the database runs in WAL mode so ``edgefleet telemetry`` can read while ``edgefleet collect``
writes. One ``TelemetryStore`` may also be shared by threads: it serialises its own calls.
``schema_version`` records the layout; opening a database migrates it forward, and refuses one
written by a newer edgefleet rather than guess.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from edgefleet.agent.errors import EdgefleetError
from edgefleet.agent.messages import (
    BenchmarkReport,
    DeploymentEvent,
    DeviceState,
    Phase,
)

SCHEMA_VERSION = 1

# Migration n takes a database from schema n-1 to n. Append; never edit a released one.
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE devices (
            id TEXT PRIMARY KEY,
            profile TEXT NOT NULL,
            simulated INTEGER NOT NULL,
            status TEXT NOT NULL,
            groups TEXT NOT NULL,            -- JSON list
            package_id TEXT,                 -- the installed model, NULL if none
            model_name TEXT,
            model_version TEXT,
            runtime TEXT,
            runtimes TEXT NOT NULL,          -- JSON object: runtime -> version
            agent_version TEXT NOT NULL,
            last_seen REAL NOT NULL,
            state TEXT NOT NULL              -- the DeviceState as received
        )""",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            deployment_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            package_id TEXT NOT NULL,
            phase TEXT NOT NULL,
            error TEXT NOT NULL,
            ts REAL NOT NULL,
            UNIQUE (device_id, deployment_id, phase, ts)
        )""",
        "CREATE INDEX events_by_deployment ON events (deployment_id, ts)",
        """CREATE TABLE benchmarks (
            id INTEGER PRIMARY KEY,
            device_id TEXT NOT NULL,
            profile TEXT NOT NULL,
            simulated INTEGER NOT NULL,
            package_id TEXT NOT NULL,
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            runtime TEXT NOT NULL,
            runtime_version TEXT NOT NULL,
            mean_ms REAL NOT NULL,
            p50_ms REAL NOT NULL,
            p90_ms REAL NOT NULL,
            p99_ms REAL NOT NULL,
            throughput_ips REAL NOT NULL,
            peak_rss_mb REAL NOT NULL,
            power_w REAL NOT NULL,
            power_source TEXT NOT NULL,
            energy_mj REAL NOT NULL,
            ts REAL NOT NULL,
            report TEXT NOT NULL,            -- the BenchmarkReport as received
            UNIQUE (device_id, package_id, ts)
        )""",
    ],
}


class StoreError(EdgefleetError):
    """The database cannot be opened or used; ``path`` names it."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    profile: str
    simulated: bool
    status: str
    groups: tuple[str, ...]
    package_id: str | None
    model_name: str | None
    model_version: str | None
    runtime: str | None
    agent_version: str
    last_seen: float
    runtimes: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class EventRow:
    deployment_id: str
    device_id: str
    package_id: str
    phase: Phase
    error: str
    ts: float


@dataclass(frozen=True, slots=True)
class BenchmarkRow:
    device_id: str
    profile: str
    simulated: bool
    package_id: str
    model_name: str
    model_version: str
    runtime: str
    runtime_version: str
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_ips: float
    peak_rss_mb: float
    power_w: float
    power_source: str
    energy_mj: float
    ts: float
    report_json: str = field(repr=False)

    def report(self) -> BenchmarkReport:
        """The full report as the device sent it."""
        return BenchmarkReport.model_validate_json(self.report_json)


class TelemetryStore:
    """A connection to the telemetry database at ``path``, created and migrated on open."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection, used from whichever thread calls; self._lock serialises the calls.
            self._conn = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the telemetry database ({exc})", path=self.path) from None
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL keeps it consistent; a crash may lose the last write
            self._migrate()
        except StoreError:
            self._conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"not a usable telemetry database ({exc})", path=self.path) from None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TelemetryStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")  # two processes opening a new file at once: one migrates, one waits
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"written by a newer edgefleet (schema {current}, this one knows {SCHEMA_VERSION}); upgrade edgefleet",
                    path=self.path,
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
            if current < SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute(sql, params)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # --- writes ------------------------------------------------------------------------

    def record_state(self, state: DeviceState) -> None:
        """Insert or update a device from its state message."""
        model = state.model
        row = {
            "id": state.device_id,
            "profile": state.profile,
            "simulated": int(state.simulated),
            "status": state.status,
            "groups": json.dumps(state.groups),
            "package_id": model.package_id if model else None,
            "model_name": model.name if model else None,
            "model_version": model.version if model else None,
            "runtime": model.runtime if model else None,
            "runtimes": json.dumps(state.runtimes, sort_keys=True),
            "agent_version": state.agent_version,
            "last_seen": state.ts,
            "state": state.model_dump_json(),
        }
        if state.status == "offline":
            # An offline state is usually the last will, composed when the device connected: it may be
            # older or sparser than what we know, so it changes the status and nothing else.
            update = "status = excluded.status, last_seen = max(devices.last_seen, excluded.last_seen)"
        else:
            update = ", ".join(f"{c} = excluded.{c}" for c in row if c not in ("id", "last_seen"))
            update += ", last_seen = max(devices.last_seen, excluded.last_seen)"
        columns = ", ".join(row)
        values = ", ".join(f":{c}" for c in row)
        self._write(f"INSERT INTO devices ({columns}) VALUES ({values}) ON CONFLICT (id) DO UPDATE SET {update}", row)

    def record_event(self, event: DeploymentEvent) -> None:
        self._write(
            "INSERT OR IGNORE INTO events (deployment_id, device_id, package_id, phase, error, ts) VALUES (?, ?, ?, ?, ?, ?)",
            (event.deployment_id, event.device_id, event.package_id, event.phase.value, event.error, event.ts),
        )

    def record_benchmark(self, report: BenchmarkReport) -> None:
        lat = report.latency_ms
        self._write(
            """INSERT OR IGNORE INTO benchmarks (device_id, profile, simulated, package_id, model_name, model_version,
                runtime, runtime_version, mean_ms, p50_ms, p90_ms, p99_ms, throughput_ips, peak_rss_mb,
                power_w, power_source, energy_mj, ts, report)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                report.device_id, report.profile, int(report.simulated), report.package_id, report.model_name,
                report.model_version, report.runtime, report.runtime_version, lat.mean, lat.p50, lat.p90, lat.p99,
                report.throughput_ips, report.peak_rss_mb, report.power.watts, report.power.source,
                report.energy_mj, report.ts, report.model_dump_json(),
            ),
        )

    # --- reads -------------------------------------------------------------------------

    def devices(self) -> list[DeviceRow]:
        return [
            DeviceRow(
                device_id=r["id"],
                profile=r["profile"],
                simulated=bool(r["simulated"]),
                status=r["status"],
                groups=tuple(json.loads(r["groups"])),
                package_id=r["package_id"],
                model_name=r["model_name"],
                model_version=r["model_version"],
                runtime=r["runtime"],
                agent_version=r["agent_version"],
                last_seen=r["last_seen"],
                runtimes=json.loads(r["runtimes"]),
            )
            for r in self._read("SELECT * FROM devices ORDER BY id")
        ]

    def latest_benchmarks(self) -> list[BenchmarkRow]:
        """The newest report for each (device, package), ordered by device then newest first."""
        rows = self._read(
            """SELECT * FROM (
                   SELECT *, row_number() OVER (PARTITION BY device_id, package_id ORDER BY ts DESC, id DESC) AS n
                   FROM benchmarks)
               WHERE n = 1 ORDER BY device_id, ts DESC"""
        )
        return [_benchmark_row(r) for r in rows]

    def events(self, deployment_id: str | None = None) -> list[EventRow]:
        """Deployment events in the order devices sent them, of one deployment or all."""
        where, params = ("WHERE deployment_id = ?", (deployment_id,)) if deployment_id else ("", ())
        return [
            EventRow(r["deployment_id"], r["device_id"], r["package_id"], Phase(r["phase"]), r["error"], r["ts"])
            for r in self._read(f"SELECT * FROM events {where} ORDER BY ts, id", params)
        ]


def _benchmark_row(r: sqlite3.Row) -> BenchmarkRow:
    return BenchmarkRow(
        device_id=r["device_id"],
        profile=r["profile"],
        simulated=bool(r["simulated"]),
        package_id=r["package_id"],
        model_name=r["model_name"],
        model_version=r["model_version"],
        runtime=r["runtime"],
        runtime_version=r["runtime_version"],
        mean_ms=r["mean_ms"],
        p50_ms=r["p50_ms"],
        p90_ms=r["p90_ms"],
        p99_ms=r["p99_ms"],
        throughput_ips=r["throughput_ips"],
        peak_rss_mb=r["peak_rss_mb"],
        power_w=r["power_w"],
        power_source=r["power_source"],
        energy_mj=r["energy_mj"],
        ts=r["ts"],
        report_json=r["report"],
    )
