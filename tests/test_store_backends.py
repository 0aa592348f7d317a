"""The store on both backends: a parametrized ``store_location`` fixture, location parsing, and what
only the new schema has (rollouts on PostgreSQL, retention, streaming export).

PostgreSQL tests run against the local server (``EDGEFLEET_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1/test``), each in a fresh ``test_<uuid>`` schema selected through
``search_path`` and dropped afterwards. If the server is unreachable they are skipped, unless
``EDGEFLEET_REQUIRE_POSTGRES=1`` makes that a failure.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_deploy_support import benchmark, event, state

from edgefleet.agent.messages import Phase
from edgefleet.deploy.retention import aggregate, parse_duration, percentile
from edgefleet.deploy.store import (
    SCHEMA_VERSION,
    PackageRecord,
    RolloutDeviceRow,
    RolloutRow,
    RolloutWaveRow,
    StoreError,
    TelemetryStore,
)
from edgefleet.deploy.store_backends import POSTGRES, StoreLocation

POSTGRES_URL = os.environ.get("EDGEFLEET_TEST_POSTGRES", "postgresql://postgres@127.0.0.1/test")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL of the test PostgreSQL whose search_path is a fresh schema, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("EDGEFLEET_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc}")
    schema = f"test_{uuid.uuid4().hex}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options={urllib.parse.quote(f'-csearch_path={schema}')}"
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where to open a fresh store: a SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "home" / "fleet.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def any_store(store_location: str) -> Iterator[TelemetryStore]:
    with TelemetryStore(store_location) as s:
        yield s


# --- locations ---------------------------------------------------------------------------------

def test_locations_parse_to_sqlite_or_postgres(tmp_path: Path) -> None:
    assert StoreLocation.parse("fleet.db") == StoreLocation("sqlite", path=Path("fleet.db"))
    assert StoreLocation.parse("sqlite:///rel/fleet.db").path == Path("rel/fleet.db")
    assert StoreLocation.parse("sqlite:////abs/fleet.db").path == Path("/abs/fleet.db")
    pg = StoreLocation.parse("postgresql://u:secret@db.example/fleet")
    assert pg.is_postgres and pg.exists() and "secret" not in str(pg)
    assert not StoreLocation.parse(tmp_path / "missing.db").exists()
    for bad in ("mysql://x/y", "sqlite://"):
        with pytest.raises(ValueError):
            StoreLocation.parse(bad)


def test_postgres_sql_is_rewritten() -> None:
    assert POSTGRES.sql("SELECT * FROM t WHERE a = ? AND b IS ?") == (
        "SELECT * FROM t WHERE a = %s AND b IS NOT DISTINCT FROM %s")
    assert POSTGRES.sql("VALUES (:id, :last_seen) SET last_seen = max(devices.last_seen, excluded.last_seen)") == (
        "VALUES (%(id)s, %(last_seen)s) SET last_seen = greatest(devices.last_seen, excluded.last_seen)")
    assert "DOUBLE PRECISION" in POSTGRES.ddl("ts REAL NOT NULL")


def test_unreachable_postgres_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot open"):
        TelemetryStore("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")


# --- both backends -------------------------------------------------------------------------------

def test_schema_is_migrated_once(store_location: str) -> None:
    TelemetryStore(store_location).close()
    with TelemetryStore(store_location) as s:  # reopening migrates nothing
        assert s._read("SELECT count(*) AS n, max(version) AS v FROM schema_version")[0]["v"] == SCHEMA_VERSION
        assert s._read("SELECT count(*) AS n FROM schema_version")[0]["n"] == 1


def test_newer_schema_is_refused(store_location: str) -> None:
    with TelemetryStore(store_location) as s:
        s._write("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer edgefleet"):
        TelemetryStore(store_location)


def test_full_precision_timestamps(any_store: TelemetryStore) -> None:
    ts = 1_763_900_000.123456
    any_store.record_benchmark(benchmark("d1", ts=ts))
    any_store.record_state(state("d1", ts=ts))
    assert any_store.latest_benchmarks()[0].ts == ts
    assert any_store.devices()[0].last_seen == ts


def test_duplicate_deliveries_are_stored_once(any_store: TelemetryStore) -> None:
    e = event("d1", "dep", Phase.DONE)
    for _ in range(3):
        any_store.record_benchmark(benchmark("d1", ts=10.0))
        any_store.record_event(e)
    assert len(list(any_store.iter_benchmarks())) == 1
    assert len(any_store.events()) == 1


def test_rollouts_packages_and_claims(any_store: TelemetryStore) -> None:
    s = any_store
    s.register_package(PackageRecord("tiny@1.0:pi", "pi", "aa", "/p/a.efpkg", 1.0))
    s.register_package(PackageRecord("tiny@1.0:pi", "pi", "bb", "/p/b.efpkg", 2.0))
    assert s.package("tiny@1.0:pi") == PackageRecord("tiny@1.0:pi", "pi", "bb", "/p/b.efpkg", 2.0)
    head = RolloutRow("r1", "running", "{}", "", None, 1.0, 1.0)
    wave = RolloutWaveRow("r1", 0, "canary", "pending", None, None, "")
    dev = RolloutDeviceRow("r1", "d1", 0, "pi", "tiny@1.0:pi", None, None, None, None, "pending", None, 0,
                           None, None, "", None, None)
    s.save_rollout(head, [wave], [dev])
    s.save_rollout(head, [RolloutWaveRow("r1", 0, "canary", "passed", 1.0, 2.0, "")],
                   [RolloutDeviceRow(**{**{f: getattr(dev, f) for f in dev.__slots__}, "phase": "done", "p90_ms": 2.5})])
    got = s.rollout("r1")
    assert got is not None
    assert got[1][0].status == "passed" and got[2][0].phase == "done" and got[2][0].p90_ms == 2.5
    assert s.claim_rollout("r1", "host:1", 5.0, free=None)
    assert not s.claim_rollout("r1", "host:2", 5.0, free=None)
    assert s.claim_rollout("r1", "host:2", 6.0, free="host:1")
    s.set_rollout_request("r1", "pause")
    assert (s.rollout_head("r1") or head).request == "pause"


def test_dashboard_queries(any_store: TelemetryStore) -> None:
    for i in range(5):
        any_store.record_benchmark(benchmark("d1", ts=float(i)))
    any_store.record_event(event("d1", "dep", Phase.DONE))
    any_store.record_state(state("d1", ts=5.0))
    assert [r.ts for r in any_store.device_benchmarks("d1", since=1.0, limit=2)] == [3.0, 4.0]
    assert any_store.device("d1") is not None and any_store.device("nope") is None
    assert len(any_store.device_events("d1")) == 1
    assert any_store.latest_benchmark("d1", "tiny@1.0:raspberry-pi-4", since=2.0).ts == 4.0  # type: ignore[union-attr]


def test_export_streams_in_pages(any_store: TelemetryStore) -> None:
    for i in range(25):
        any_store.record_benchmark(benchmark(f"d{i % 5}", ts=float(i // 5)))  # equal timestamps across pages
    rows = list(any_store.iter_benchmarks(batch=4))
    assert len(rows) == 25 and [r.ts for r in rows] == sorted(r.ts for r in rows)
    assert len({(r.device_id, r.ts) for r in rows}) == 25
    assert [r.ts for r in any_store.iter_benchmarks(since=2.0, device_id="d0", batch=2)] == [2.0, 3.0, 4.0]


def test_prune_downsamples_old_reports_and_keeps_the_latest(any_store: TelemetryStore) -> None:
    s = any_store
    for i in range(10):  # d1 / 1.0: ten reports, two per 100 s bucket (ts 0..900)
        s.record_benchmark(benchmark("d1", p50=float(i + 1), ts=i * 50.0))
    s.record_benchmark(benchmark("d1", version="2.0", ts=10.0))  # old, but the only report of 2.0
    s.record_benchmark(benchmark("d2", ts=2000.0))  # recent
    result = s.prune_benchmarks(400.0, bucket_seconds=100.0)
    # d1/1.0: ts 0..350 pruned (8 reports), ts 400..450 recent; d1/2.0 kept as its latest
    assert (result.deleted, result.rollups, result.kept_latest) == (8, 4, 1)
    left = sorted((r.device_id, r.model_version, r.ts) for r in s.iter_benchmarks())
    assert left == [("d1", "1.0", 400.0), ("d1", "1.0", 450.0), ("d1", "2.0", 10.0), ("d2", "1.0", 2000.0)]
    rollups = s.rollups("d1")
    assert [(r.bucket_start, r.count) for r in rollups] == [(0.0, 2), (100.0, 2), (200.0, 2), (300.0, 2)]
    first = rollups[0]
    assert first.p50_ms == 1.0 and first.max_p99_ms == 4.0 and first.mean_ms == pytest.approx(1.65)
    assert (first.first_ts, first.last_ts, first.simulated) == (0.0, 50.0, True)
    # A late delivery into a rolled-up bucket is merged on the next prune, not double-rolled.
    s.record_benchmark(benchmark("d1", p50=100.0, ts=20.0))
    again = s.prune_benchmarks(400.0, bucket_seconds=100.0)
    assert (again.deleted, again.rollups) == (1, 1)
    merged = s.rollups("d1")[0]
    assert merged.count == 3 and merged.max_p99_ms == 200.0
    assert len(s.rollups()) == 4
    # Without --downsample old reports are just deleted.
    s.record_benchmark(benchmark("d1", ts=500.0))
    assert s.prune_benchmarks(460.0).deleted == 2 and len(s.rollups()) == 4


# --- retention arithmetic ----------------------------------------------------------------------------

def test_durations_and_percentiles() -> None:
    assert parse_duration("30d") == 30 * 86400 and parse_duration("1h") == 3600 and parse_duration("90") == 90
    for bad in ("", "0d", "3 years", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3 and percentile([1, 2], 0.9) == 2 and percentile([7], 0.99) == 7


def test_aggregate_of_one_bucket() -> None:
    from edgefleet.deploy.store import BenchmarkRow

    def row(p50: float, ts: float) -> BenchmarkRow:
        b = benchmark("d1", p50=p50, ts=ts)
        lat = b.latency_ms
        return BenchmarkRow(b.device_id, b.profile, b.simulated, b.package_id, b.model_name, b.model_version,
                            b.runtime, b.runtime_version, lat.mean, lat.p50, lat.p90, lat.p99, b.throughput_ips,
                            b.peak_rss_mb, b.power.watts, b.power.source, b.energy_mj, b.ts, b.model_dump_json())

    r = aggregate([row(float(i), 3600.0 + i) for i in range(1, 11)], 3600.0)
    assert (r.count, r.bucket_start, r.p50_ms, r.p90_ms, r.p99_ms) == (10, 3600.0, 5.0, 9 * 1.4, 20.0)


def test_a_schema_2_database_is_migrated_to_3(store_location: str) -> None:
    with TelemetryStore(store_location) as s:  # make it look like a database written by the previous release
        s.record_benchmark(benchmark("d1", ts=5.0))
        s._transaction([("DROP TABLE benchmark_rollups", ()), ("DROP INDEX benchmarks_by_ts", ()),
                        ("UPDATE schema_version SET version = 2", ())])
    with TelemetryStore(store_location) as s:
        assert s._read("SELECT version FROM schema_version")[0]["version"] == SCHEMA_VERSION == 3
        assert s.rollups() == [] and len(list(s.iter_benchmarks())) == 1


def test_postgres_connection_is_reopened_after_it_breaks(postgres_url: str) -> None:
    import psycopg

    with TelemetryStore(postgres_url) as s:
        pid = s._read("SELECT pg_backend_pid() AS pid")[0]["pid"]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):  # this call finds it broken (the collector counts it)
            s.record_benchmark(benchmark("d1", ts=1.0))
        s.record_benchmark(benchmark("d1", ts=2.0))  # and the next one reconnects
        assert [r.ts for r in s.iter_benchmarks()] == [2.0]
