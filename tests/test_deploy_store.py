"""The telemetry store: upserts, idempotent writes, latest benchmarks, schema versions.

Tests taking ``store`` run on SQLite and on PostgreSQL (``test_store_backends.store_location``);
those about the SQLite file itself (WAL, junk files, two connections) on SQLite only.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_deploy_support import benchmark, event, state
from test_store_backends import postgres_url, store_location  # noqa: F401  (fixtures)

from edgefleet.agent.messages import Phase
from edgefleet.deploy.store import SCHEMA_VERSION, StoreError, TelemetryStore


@pytest.fixture
def store(store_location: str) -> Iterator[TelemetryStore]:  # noqa: F811
    with TelemetryStore(store_location) as s:
        yield s


def test_new_database_is_wal_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    TelemetryStore(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    TelemetryStore(path).close()  # reopening migrates nothing and keeps one version row
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1


def test_refuses_a_newer_schema_and_non_databases(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    TelemetryStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer edgefleet"):
        TelemetryStore(path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable telemetry database"):
        TelemetryStore(junk)


def test_state_upsert_and_offline_will_keeps_what_we_know(store: TelemetryStore) -> None:
    store.record_state(state("d1", ts=100.0))
    store.record_state(state("d1", groups=["kitchen", "north"], ts=200.0))
    # A last will composed at connect time: older and sparse.
    store.record_state(state("d1", status="offline", profile="", model=None, groups=[], ts=50.0))
    (row,) = store.devices()
    assert row.device_id == "d1" and row.status == "offline"
    assert row.profile == "raspberry-pi-4" and row.simulated
    assert row.groups == ("kitchen", "north")
    assert (row.package_id, row.model_name, row.model_version, row.runtime) == ("tiny@1.0:raspberry-pi-4", "tiny", "1.0", "onnxruntime")
    assert row.runtimes == {"onnxruntime": "1.17.0"}
    assert row.last_seen == 200.0
    store.record_state(state("d1", model=None, ts=300.0))
    (row,) = store.devices()
    assert row.status == "online" and row.package_id is None and row.last_seen == 300.0


def test_duplicates_are_stored_once(store: TelemetryStore) -> None:
    e = event("d1", "dep", Phase.DONE)
    b = benchmark("d1", ts=10.0)
    for _ in range(3):  # QoS 1 is at-least-once
        store.record_event(e)
        store.record_benchmark(b)
    assert len(store.events()) == 1
    assert len(store.latest_benchmarks()) == 1


def test_latest_benchmark_per_device_and_package(store: TelemetryStore) -> None:
    store.record_benchmark(benchmark("d2", version="1.0", p50=9.0, ts=1.0))
    store.record_benchmark(benchmark("d1", version="1.0", p50=5.0, ts=1.0))
    store.record_benchmark(benchmark("d1", version="1.0", p50=4.0, ts=2.0))
    store.record_benchmark(benchmark("d1", version="2.0", p50=2.0, ts=3.0))
    rows = store.latest_benchmarks()
    assert [(r.device_id, r.model_version, r.p50_ms) for r in rows] == [("d1", "2.0", 2.0), ("d1", "1.0", 4.0), ("d2", "1.0", 9.0)]
    top = rows[0]
    assert top.report() == benchmark("d1", version="2.0", p50=2.0, ts=3.0)
    assert (top.power_w, top.power_source, top.peak_rss_mb) == (3.4, "estimate", 45.25)


def test_events_by_deployment_in_order(store: TelemetryStore) -> None:
    for phase in (Phase.RECEIVED, Phase.DOWNLOADING, Phase.FAILED):
        store.record_event(event("d1", "a", phase, "bad hash" if phase is Phase.FAILED else ""))
    store.record_event(event("d2", "b", Phase.DONE))
    assert [e.phase for e in store.events("a")] == [Phase.RECEIVED, Phase.DOWNLOADING, Phase.FAILED]
    assert store.events("a")[-1].error == "bad hash"
    assert len(store.events()) == 4


def test_one_writer_thread_and_a_reader_connection(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    writer = TelemetryStore(path)
    reader = TelemetryStore(path)

    def write() -> None:
        for i in range(200):
            writer.record_benchmark(benchmark(f"d{i % 5}", ts=float(i)))

    thread = threading.Thread(target=write)
    thread.start()
    while thread.is_alive():
        assert len(reader.latest_benchmarks()) <= 5
    thread.join()
    assert len(reader.latest_benchmarks()) == 5
    writer.close()
    reader.close()
