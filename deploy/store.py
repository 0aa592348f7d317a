"""The telemetry store: what the fleet has heard from its devices, in SQLite or PostgreSQL.

``TelemetryStore(location)`` opens a SQLite file (a path, or ``sqlite:///path``: the default,
nothing to install) or a PostgreSQL database (``postgresql://user@host/db``, through psycopg 3;
``deploy/store_backends.py``). Both hold the same tables and run the same migrations.

Three tables, filled by the collector from the messages of ``docs/protocol.md``:

    devices     one row per device, from its latest DeviceState (upserted)
    events      every DeploymentEvent: the history of each deployment on each device
    benchmarks  every BenchmarkReport: the figures the telemetry table shows, plus the full JSON

one written by ``edgefleet telemetry prune`` (``edgefleet.deploy.retention``):

    benchmark_rollups  per device, package and time bucket: aggregates of pruned benchmarks

and four written by staged rollouts (``edgefleet.deploy.rollout``, ``docs/fleet.md``):

    packages         package files the fleet side has shipped, by package id (what a rollback pushes)
    rollouts         one row per rollout: its plan (JSON), status, and the process running it
    rollout_waves    the phase of each wave of a rollout
    rollout_devices  the phase of each device of a rollout, with the package it had before

Writes are idempotent (QoS 1 delivers a message at least once, so duplicates are expected) and
a SQLite database runs in WAL mode so ``edgefleet telemetry`` can read while ``edgefleet collect``
writes. One ``TelemetryStore`` may also be shared by threads: it serialises its own calls.
``schema_version`` records the layout; opening a database migrates it forward, and refuses one
written by a newer edgefleet rather than guess.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
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
from edgefleet.deploy.store_backends import (
    POSTGRES,
    SQLITE,
    StoreLocation,
    connect_postgres,
    database_errors,
)

SCHEMA_VERSION = 3

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
    2: [
        """CREATE TABLE packages (
            package_id TEXT PRIMARY KEY,     -- name@version:profile
            profile TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            path TEXT NOT NULL,              -- absolute path of the .efpkg file on this host
            registered_at REAL NOT NULL
        )""",
        """CREATE TABLE rollouts (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL,            -- running, paused, rolling_back, completed, aborted
            plan TEXT NOT NULL,              -- JSON: packages, target, strategy, gates
            reason TEXT NOT NULL,            -- why it was aborted or paused
            next_wave_at REAL,               -- when the next wave may start (absolute time)
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            request TEXT,                    -- 'pause' or 'abort', written by another process
            owner TEXT,                      -- host:pid of the process running it
            heartbeat_at REAL
        )""",
        """CREATE TABLE rollout_waves (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id),
            wave INTEGER NOT NULL,
            label TEXT NOT NULL,             -- "canary" or "50%"
            status TEXT NOT NULL,            -- pending, deploying, passed, failed
            started_at REAL,
            finished_at REAL,
            reason TEXT NOT NULL,
            PRIMARY KEY (rollout_id, wave)
        )""",
        """CREATE TABLE rollout_devices (
            rollout_id TEXT NOT NULL REFERENCES rollouts (id),
            device_id TEXT NOT NULL,
            wave INTEGER NOT NULL,
            profile TEXT NOT NULL,
            package_id TEXT NOT NULL,        -- what the rollout installs
            previous_package_id TEXT,        -- what the device ran before, NULL if nothing
            previous_path TEXT,              -- that package's file, NULL if unknown
            baseline_p90_ms REAL,            -- the previous package's latest benchmark on this device
            baseline_energy_mj REAL,
            phase TEXT NOT NULL,
            deployment_id TEXT,              -- the latest deployment pushed to it
            attempt INTEGER NOT NULL,
            started_at REAL,
            finished_at REAL,
            error TEXT NOT NULL,
            p90_ms REAL,                     -- the new package's benchmark on this device
            energy_mj REAL,
            PRIMARY KEY (rollout_id, device_id)
        )""",
    ],
    3: [
        "CREATE INDEX benchmarks_by_ts ON benchmarks (ts)",
        """CREATE TABLE benchmark_rollups (
            device_id TEXT NOT NULL,
            package_id TEXT NOT NULL,
            bucket_seconds REAL NOT NULL,    -- the bucket's width
            bucket_start REAL NOT NULL,      -- a multiple of bucket_seconds (Unix time)
            profile TEXT NOT NULL,
            simulated INTEGER NOT NULL,
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            runtime TEXT NOT NULL,
            count INTEGER NOT NULL,          -- how many reports it replaces
            first_ts REAL NOT NULL,
            last_ts REAL NOT NULL,
            mean_ms REAL NOT NULL,           -- mean of the reports' means
            p50_ms REAL NOT NULL,            -- median of their p50s
            p90_ms REAL NOT NULL,            -- p90 of their p90s
            p99_ms REAL NOT NULL,            -- p99 of their p99s
            max_p99_ms REAL NOT NULL,        -- the worst p99
            throughput_ips REAL NOT NULL,    -- mean
            peak_rss_mb REAL NOT NULL,       -- max
            power_w REAL NOT NULL,           -- mean
            energy_mj REAL NOT NULL,         -- mean
            PRIMARY KEY (device_id, package_id, bucket_seconds, bucket_start)
        )""",
    ],
}


class StoreError(EdgefleetError):
    """The database cannot be opened or used; ``path`` names it (a file, or a redacted URL)."""

    def __init__(self, message: str, *, path: Path | StoreLocation) -> None:
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
    labels: dict[str, str] = field(default_factory=dict, hash=False)


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


@dataclass(frozen=True, slots=True)
class PackageRecord:
    """A package file the fleet side knows, so a rollback can push it again."""

    package_id: str
    profile: str
    sha256: str
    path: str
    registered_at: float


@dataclass(frozen=True, slots=True)
class RolloutRow:
    rollout_id: str
    status: str
    plan_json: str
    reason: str
    next_wave_at: float | None
    created_at: float
    updated_at: float
    request: str | None = None
    owner: str | None = None
    heartbeat_at: float | None = None


@dataclass(frozen=True, slots=True)
class RolloutWaveRow:
    rollout_id: str
    wave: int
    label: str
    status: str
    started_at: float | None
    finished_at: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class RolloutDeviceRow:
    rollout_id: str
    device_id: str
    wave: int
    profile: str
    package_id: str
    previous_package_id: str | None
    previous_path: str | None
    baseline_p90_ms: float | None
    baseline_energy_mj: float | None
    phase: str
    deployment_id: str | None
    attempt: int
    started_at: float | None
    finished_at: float | None
    error: str
    p90_ms: float | None
    energy_mj: float | None


@dataclass(frozen=True, slots=True)
class RollupRow:
    """Aggregates of the benchmarks of one package on one device within one time bucket."""

    device_id: str
    package_id: str
    bucket_seconds: float
    bucket_start: float
    profile: str
    simulated: bool
    model_name: str
    model_version: str
    runtime: str
    count: int
    first_ts: float
    last_ts: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_p99_ms: float
    throughput_ips: float
    peak_rss_mb: float
    power_w: float
    energy_mj: float


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What ``prune_benchmarks`` did: raw reports deleted, rollup rows written, reports kept as latest."""

    deleted: int = 0
    rollups: int = 0
    kept_latest: int = 0


class TelemetryStore:
    """A connection to the telemetry database at ``path``, created and migrated on open.

    ``path`` is a SQLite file (``Path``, a path string, or ``sqlite:///path``), a PostgreSQL URL
    (``postgresql://user@host/db``), or a ``StoreLocation`` parsed from either.
    """

    def __init__(self, path: Path | str | StoreLocation) -> None:
        try:
            self.location = StoreLocation.parse(path)
        except ValueError as exc:
            raise StoreError(str(exc), path=Path(str(path))) from None
        self._lock = threading.Lock()
        if self.location.is_postgres:
            self.path: Path | StoreLocation = self.location
            self._dialect = POSTGRES
            self._open_postgres()
            return
        assert self.location.path is not None
        self.path = self.location.path
        self._dialect = SQLITE
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

    def _open_postgres(self) -> None:
        assert self.location.url is not None
        try:
            self._conn = connect_postgres(self.location.url)
        except ImportError:
            raise StoreError(
                "PostgreSQL needs psycopg 3: pip install 'edgefleet[fleet]' (or 'psycopg[binary]')", path=self.path
            ) from None
        except database_errors() as exc:
            raise StoreError(f"cannot open the telemetry database ({exc})".strip(), path=self.path) from None
        try:
            self._migrate()
        except StoreError:
            self._conn.close()
            raise
        except database_errors() as exc:
            self._conn.close()
            raise StoreError(f"not a usable telemetry database ({exc})", path=self.path) from None

    def _reopen_if_lost(self) -> None:
        """Reconnect to PostgreSQL if the last call found the connection broken (a server restart).

        The call that found it broken has already failed (the collector counts it); later ones work again.
        """
        if self._dialect is POSTGRES and self._conn.closed:
            assert self.location.url is not None
            self._conn = connect_postgres(self.location.url)

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._dialect.name

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
        conn.execute("BEGIN IMMEDIATE" if self._dialect is SQLITE else "BEGIN")
        try:
            if self._dialect is POSTGRES:  # two processes opening a new database at once: one migrates, one waits
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('edgefleet:' || current_schema()))")
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) AS v FROM schema_version").fetchone()
            current = row["v"] or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"written by a newer edgefleet (schema {current}, this one knows {SCHEMA_VERSION}); upgrade edgefleet",
                    path=self.path,
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    conn.execute(self._dialect.ddl(statement))
            if current < SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute(self._dialect.sql("INSERT INTO schema_version (version) VALUES (?)"), (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> None:
        with self._lock:
            self._reopen_if_lost()
            self._conn.execute(self._dialect.sql(sql), params)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Rows as mappings by column name (``sqlite3.Row`` or ``dict``)."""
        with self._lock:
            self._reopen_if_lost()
            return self._conn.execute(self._dialect.sql(sql), params).fetchall()

    def _transaction(self, statements: Sequence[tuple[str, tuple[Any, ...] | dict[str, Any]]]) -> None:
        """Run ``statements`` atomically: another process reads all of them or none."""
        with self._lock:
            self._reopen_if_lost()
            self._conn.execute("BEGIN IMMEDIATE" if self._dialect is SQLITE else "BEGIN")
            try:
                # Runs of the same statement go in one executemany: a collector's batch is mostly one INSERT.
                cursor = self._conn.cursor()  # sqlite3 and psycopg both have executemany on a cursor
                for sql, run in itertools.groupby(statements, key=lambda s: s[0]):
                    cursor.executemany(self._dialect.sql(sql), [params for _, params in run])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    # --- writes ------------------------------------------------------------------------

    def record_state(self, state: DeviceState) -> None:
        """Insert or update a device from its state message."""
        self._write(*_state_statement(state))

    def record_event(self, event: DeploymentEvent) -> None:
        self._write(*_event_statement(event))

    def record_benchmark(self, report: BenchmarkReport) -> None:
        self._write(*_benchmark_statement(report))

    def record_many(self, messages: Sequence[DeviceState | DeploymentEvent | BenchmarkReport]) -> None:
        """Store several messages in one transaction: all or none.

        The collector's ingest path: one commit per batch instead of one per message is what lets a
        single SQLite writer keep up with thousands of messages a second (docs/scaling.md).
        """
        self._transaction([_statement(m) for m in messages])

    # --- reads -------------------------------------------------------------------------

    def devices(self) -> list[DeviceRow]:
        return [_device_row(r) for r in self._read("SELECT * FROM devices ORDER BY id")]

    def latest_benchmarks(self, device_ids: Sequence[str] | None = None) -> list[BenchmarkRow]:
        """The newest report for each (device, package) (of ``device_ids`` only, if given), by device then newest first."""
        # The newest ts per pair comes from the UNIQUE (device_id, package_id, ts) index alone, and only those
        # rows are read: a window over the whole table read every report's JSON (0.5 s at 30,000 reports).
        where, params = "", ()
        if device_ids is not None:
            if not device_ids:
                return []
            where, params = f"WHERE device_id IN ({', '.join('?' * len(device_ids))})", tuple(device_ids)
        rows = self._read(
            f"""SELECT b.* FROM benchmarks AS b
               JOIN (SELECT device_id, package_id, max(ts) AS ts FROM benchmarks {where} GROUP BY device_id, package_id)
                 AS newest ON b.device_id = newest.device_id AND b.package_id = newest.package_id AND b.ts = newest.ts
               ORDER BY b.device_id, b.ts DESC""", params
        )
        return [_benchmark_row(r) for r in rows]

    def events(self, deployment_id: str | None = None) -> list[EventRow]:
        """Deployment events in the order devices sent them, of one deployment or all."""
        where, params = ("WHERE deployment_id = ?", (deployment_id,)) if deployment_id else ("", ())
        return [
            EventRow(r["deployment_id"], r["device_id"], r["package_id"], Phase(r["phase"]), r["error"], r["ts"])
            for r in self._read(f"SELECT * FROM events {where} ORDER BY ts, id", params)
        ]

    def latest_benchmark(self, device_id: str, package_id: str, *, since: float | None = None) -> BenchmarkRow | None:
        """The newest report of ``package_id`` on ``device_id`` (sent at or after ``since``), if any."""
        rows = self._read(
            "SELECT * FROM benchmarks WHERE device_id = ? AND package_id = ? AND ts >= ? ORDER BY ts DESC, id DESC LIMIT 1",
            (device_id, package_id, since if since is not None else -1e300),
        )
        return _benchmark_row(rows[0]) if rows else None

    def iter_benchmarks(
        self, *, since: float | None = None, device_id: str | None = None, batch: int = 1000
    ) -> Iterator[BenchmarkRow]:
        """Every raw report (sent at or after ``since``, of ``device_id``), oldest first, ``batch`` rows at a time.

        Pages by (ts, id), so memory stays bounded however large the table, and the lock is not held
        between pages: the collector keeps writing while an export runs.
        """
        where = ["ts >= ?"]
        base: list[Any] = [since if since is not None else -1e300]
        if device_id is not None:
            where.append("device_id = ?")
            base.append(device_id)
        after: tuple[float, int] | None = None
        while True:
            clauses, params = list(where), list(base)
            if after is not None:
                clauses.append("(ts > ? OR (ts = ? AND id > ?))")
                params += [after[0], after[0], after[1]]
            rows = self._read(
                f"SELECT * FROM benchmarks WHERE {' AND '.join(clauses)} ORDER BY ts, id LIMIT ?", (*params, batch))
            for r in rows:
                yield _benchmark_row(r)
            if len(rows) < batch:
                return
            after = (rows[-1]["ts"], rows[-1]["id"])

    def rollups(self, device_id: str | None = None) -> list[RollupRow]:
        """Aggregates written by ``prune_benchmarks``, by device, package, then time."""
        where, params = ("WHERE device_id = ?", (device_id,)) if device_id else ("", ())
        rows = self._read(
            f"SELECT * FROM benchmark_rollups {where} ORDER BY device_id, package_id, bucket_start, bucket_seconds",
            params)
        return [_rollup_row(r) for r in rows]

    def prune_benchmarks(self, cutoff: float, *, bucket_seconds: float | None = None) -> PruneResult:
        """Delete reports sent before ``cutoff``, folding them into rollups if ``bucket_seconds``.

        Keeps the newest report of each package on each device. One transaction per device and
        package, so a crash leaves each pair either pruned or not. See ``edgefleet.deploy.retention``.
        """
        from edgefleet.deploy.retention import aggregate, bucket_start, merge

        if bucket_seconds is not None and bucket_seconds <= 0:
            raise ValueError("bucket_seconds must be positive")
        pairs = self._read(
            "SELECT device_id, package_id, count(*) AS n FROM benchmarks WHERE ts < ? "
            "GROUP BY device_id, package_id ORDER BY device_id, package_id", (cutoff,))
        result = PruneResult()
        for pair in pairs:
            device, package = pair["device_id"], pair["package_id"]
            raw = self._read(  # one device's history of one package: bounded, unlike the whole table
                """SELECT * FROM benchmarks WHERE device_id = ? AND package_id = ? AND ts < ?
                   AND id <> (SELECT id FROM benchmarks WHERE device_id = ? AND package_id = ?
                              ORDER BY ts DESC, id DESC LIMIT 1)
                   ORDER BY ts, id""", (device, package, cutoff, device, package))
            ids = [r["id"] for r in raw]
            rows = [_benchmark_row(r) for r in raw]
            kept = pair["n"] - len(ids)
            statements: list[tuple[str, tuple[Any, ...] | dict[str, Any]]] = []
            written = 0
            if bucket_seconds is not None and rows:
                existing = {r.bucket_start: r for r in self.rollups(device) if r.package_id == package
                            and r.bucket_seconds == bucket_seconds}
                buckets: dict[float, list[BenchmarkRow]] = {}
                for row in rows:
                    buckets.setdefault(bucket_start(row.ts, bucket_seconds), []).append(row)
                for start, members in buckets.items():
                    rollup = aggregate(members, bucket_seconds)
                    if start in existing:
                        rollup = merge(existing[start], rollup)
                    statements.append(_upsert_rollup(rollup))
                    written += 1
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                statements.append((f"DELETE FROM benchmarks WHERE id IN ({', '.join('?' * len(chunk))})", tuple(chunk)))
            if statements:
                self._transaction(statements)
            result = PruneResult(result.deleted + len(ids), result.rollups + written, result.kept_latest + kept)
        return result

    # --- dashboard queries (read-only) ------------------------------------------------------

    def device(self, device_id: str) -> DeviceRow | None:
        """One device's row, or None if the store has never heard of it."""
        rows = self._read("SELECT * FROM devices WHERE id = ?", (device_id,))
        return _device_row(rows[0]) if rows else None

    def device_benchmarks(self, device_id: str, *, since: float | None = None, limit: int = 500) -> list[BenchmarkRow]:
        """A device's reports (of every package), oldest first: the newest ``limit`` sent at or after ``since``."""
        rows = self._read(
            """SELECT * FROM (SELECT * FROM benchmarks WHERE device_id = ? AND ts >= ? ORDER BY ts DESC, id DESC LIMIT ?) AS newest
               ORDER BY ts, id""",
            (device_id, since if since is not None else -1e300, limit),
        )
        return [_benchmark_row(r) for r in rows]

    def device_events(self, device_id: str, *, limit: int = 50) -> list[EventRow]:
        """A device's newest ``limit`` deployment events, newest first."""
        return [
            EventRow(r["deployment_id"], r["device_id"], r["package_id"], Phase(r["phase"]), r["error"], r["ts"])
            for r in self._read(
                "SELECT * FROM events WHERE device_id = ? ORDER BY ts DESC, id DESC LIMIT ?", (device_id, limit))
        ]

    # --- packages (rollouts push them again on rollback) -----------------------------------

    def register_package(self, record: PackageRecord) -> None:
        """Remember where a package's file is; a later registration of the same id wins."""
        self._write(
            """INSERT INTO packages (package_id, profile, sha256, path, registered_at) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (package_id) DO UPDATE SET profile = excluded.profile, sha256 = excluded.sha256,
               path = excluded.path, registered_at = excluded.registered_at""",
            (record.package_id, record.profile, record.sha256, record.path, record.registered_at),
        )

    def package(self, package_id: str) -> PackageRecord | None:
        rows = self._read("SELECT * FROM packages WHERE package_id = ?", (package_id,))
        if not rows:
            return None
        r = rows[0]
        return PackageRecord(r["package_id"], r["profile"], r["sha256"], r["path"], r["registered_at"])

    # --- rollouts ----------------------------------------------------------------------

    def save_rollout(self, rollout: RolloutRow, waves: list[RolloutWaveRow], devices: list[RolloutDeviceRow]) -> None:
        """Insert or update a rollout with its waves and devices, atomically.

        ``request``, ``owner`` and ``heartbeat_at`` are left alone on update: other processes write them.
        """
        statements: list[tuple[str, tuple[Any, ...] | dict[str, Any]]] = [
            (
                """INSERT INTO rollouts (id, status, plan, reason, next_wave_at, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET status = excluded.status, plan = excluded.plan,
                   reason = excluded.reason, next_wave_at = excluded.next_wave_at, updated_at = excluded.updated_at""",
                (rollout.rollout_id, rollout.status, rollout.plan_json, rollout.reason, rollout.next_wave_at,
                 rollout.created_at, rollout.updated_at),
            )
        ]
        for w in waves:
            statements.append((
                "INSERT INTO rollout_waves VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rollout_id, wave) DO UPDATE SET "
                + _set_excluded(("label", "status", "started_at", "finished_at", "reason")),
                (w.rollout_id, w.wave, w.label, w.status, w.started_at, w.finished_at, w.reason),
            ))
        for d in devices:
            statements.append((
                "INSERT INTO rollout_devices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (rollout_id, device_id) DO UPDATE SET " + _set_excluded(_ROLLOUT_DEVICE_UPDATES),
                (d.rollout_id, d.device_id, d.wave, d.profile, d.package_id, d.previous_package_id, d.previous_path,
                 d.baseline_p90_ms, d.baseline_energy_mj, d.phase, d.deployment_id, d.attempt, d.started_at,
                 d.finished_at, d.error, d.p90_ms, d.energy_mj),
            ))
        self._transaction(statements)

    def rollouts(self) -> list[RolloutRow]:
        """Every rollout, newest first."""
        return [_rollout_row(r) for r in self._read("SELECT * FROM rollouts ORDER BY created_at DESC, id")]

    def rollout_head(self, rollout_id: str) -> RolloutRow | None:
        """A rollout's own row (status, pending request, owner), without its waves and devices."""
        rows = self._read("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
        return _rollout_row(rows[0]) if rows else None

    def rollout(self, rollout_id: str) -> tuple[RolloutRow, list[RolloutWaveRow], list[RolloutDeviceRow]] | None:
        """A rollout with its waves (in order) and devices (by wave, then id); None if unknown."""
        sql = self._dialect.sql
        with self._lock:  # one read transaction, so the three parts agree
            self._reopen_if_lost()
            self._conn.execute("BEGIN" if self._dialect is SQLITE else "BEGIN ISOLATION LEVEL REPEATABLE READ")
            try:
                head = self._conn.execute(sql("SELECT * FROM rollouts WHERE id = ?"), (rollout_id,)).fetchall()
                waves = self._conn.execute(
                    sql("SELECT * FROM rollout_waves WHERE rollout_id = ? ORDER BY wave"), (rollout_id,)).fetchall()
                devices = self._conn.execute(
                    sql("SELECT * FROM rollout_devices WHERE rollout_id = ? ORDER BY wave, device_id"), (rollout_id,)
                ).fetchall()
            finally:
                self._conn.execute("COMMIT")
        if not head:
            return None
        return (
            _rollout_row(head[0]),
            [RolloutWaveRow(w["rollout_id"], w["wave"], w["label"], w["status"], w["started_at"], w["finished_at"],
                            w["reason"]) for w in waves],
            [RolloutDeviceRow(**{k: d[k] for k in d.keys()}) for d in devices],  # columns are named as the fields
        )

    def set_rollout_request(self, rollout_id: str, request: str | None) -> None:
        """Ask the process running a rollout to pause or abort it (None withdraws the request)."""
        self._write("UPDATE rollouts SET request = ? WHERE id = ?", (request, rollout_id))

    def clear_rollout_request(self, rollout_id: str, request: str) -> None:
        """Mark ``request`` handled, unless another one replaced it meanwhile."""
        self._write("UPDATE rollouts SET request = NULL WHERE id = ? AND request = ?", (rollout_id, request))

    def claim_rollout(self, rollout_id: str, owner: str, now: float, *, free: str | None) -> bool:
        """Make ``owner`` the process running a rollout if its current owner is ``free`` (None: nobody).

        Compare-and-set, so of two processes resuming the same rollout one wins.
        """
        with self._lock:
            self._reopen_if_lost()
            cur = self._conn.execute(
                self._dialect.sql("UPDATE rollouts SET owner = ?, heartbeat_at = ? WHERE id = ? AND owner IS ?"),
                (owner, now, rollout_id, free),
            )
            return cur.rowcount == 1

    def heartbeat_rollout(self, rollout_id: str, owner: str, now: float) -> None:
        self._write("UPDATE rollouts SET heartbeat_at = ? WHERE id = ? AND owner = ?", (now, rollout_id, owner))

    def release_rollout(self, rollout_id: str, owner: str) -> None:
        self._write("UPDATE rollouts SET owner = NULL, heartbeat_at = NULL WHERE id = ? AND owner = ?",
                    (rollout_id, owner))


def _statement(message: DeviceState | DeploymentEvent | BenchmarkReport) -> tuple[str, Any]:
    if isinstance(message, DeviceState):
        return _state_statement(message)
    if isinstance(message, DeploymentEvent):
        return _event_statement(message)
    return _benchmark_statement(message)


def _state_statement(state: DeviceState) -> tuple[str, dict[str, Any]]:
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
    return f"INSERT INTO devices ({columns}) VALUES ({values}) ON CONFLICT (id) DO UPDATE SET {update}", row


def _event_statement(event: DeploymentEvent) -> tuple[str, tuple[Any, ...]]:
    return (
        ("INSERT INTO events (deployment_id, device_id, package_id, phase, error, ts) VALUES (?, ?, ?, ?, ?, ?)"
         " ON CONFLICT DO NOTHING"),  # a duplicate delivery is the same row: stored once
        (event.deployment_id, event.device_id, event.package_id, event.phase.value, event.error, event.ts),
    )


def _benchmark_statement(report: BenchmarkReport) -> tuple[str, tuple[Any, ...]]:
    lat = report.latency_ms
    return (
        """INSERT INTO benchmarks (device_id, profile, simulated, package_id, model_name, model_version,
            runtime, runtime_version, mean_ms, p50_ms, p90_ms, p99_ms, throughput_ips, peak_rss_mb,
            power_w, power_source, energy_mj, ts, report)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (device_id, package_id, ts) DO NOTHING""",  # a duplicate delivery: stored once
        (
            report.device_id, report.profile, int(report.simulated), report.package_id, report.model_name,
            report.model_version, report.runtime, report.runtime_version, lat.mean, lat.p50, lat.p90, lat.p99,
            report.throughput_ips, report.peak_rss_mb, report.power.watts, report.power.source,
            report.energy_mj, report.ts, report.model_dump_json(),
        ),
    )


_ROLLOUT_DEVICE_UPDATES = (
    "wave", "profile", "package_id", "previous_package_id", "previous_path", "baseline_p90_ms", "baseline_energy_mj",
    "phase", "deployment_id", "attempt", "started_at", "finished_at", "error", "p90_ms", "energy_mj",
)


def _set_excluded(columns: Sequence[str]) -> str:
    return ", ".join(f"{c} = excluded.{c}" for c in columns)


def _device_row(r: Any) -> DeviceRow:
    return DeviceRow(
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
        # Labels live in the stored DeviceState (no column of their own, so no migration); states from
        # agents before labels have none.
        labels=json.loads(r["state"]).get("labels", {}),
    )


_ROLLUP_COLUMNS = tuple(RollupRow.__dataclass_fields__)


def _rollup_row(r: Any) -> RollupRow:
    values = {c: r[c] for c in _ROLLUP_COLUMNS}
    values["simulated"] = bool(values["simulated"])
    return RollupRow(**values)


def _upsert_rollup(rollup: RollupRow) -> tuple[str, dict[str, Any]]:
    values = {c: getattr(rollup, c) for c in _ROLLUP_COLUMNS}
    values["simulated"] = int(rollup.simulated)
    key = ("device_id", "package_id", "bucket_seconds", "bucket_start")
    sql = (
        f"INSERT INTO benchmark_rollups ({', '.join(_ROLLUP_COLUMNS)}) VALUES ({', '.join(':' + c for c in _ROLLUP_COLUMNS)})"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {_set_excluded([c for c in _ROLLUP_COLUMNS if c not in key])}"
    )
    return sql, values


def _rollout_row(r: Any) -> RolloutRow:
    return RolloutRow(
        rollout_id=r["id"], status=r["status"], plan_json=r["plan"], reason=r["reason"], next_wave_at=r["next_wave_at"],
        created_at=r["created_at"], updated_at=r["updated_at"], request=r["request"], owner=r["owner"],
        heartbeat_at=r["heartbeat_at"],
    )


def _benchmark_row(r: Any) -> BenchmarkRow:
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
