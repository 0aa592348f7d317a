"""``edgefleet telemetry`` and ``edgefleet collect``: thin commands over the store and collector.

``collect`` listens to the broker and fills the store (SQLite or PostgreSQL, ``--db``);
``telemetry`` reads the store and prints it, ``telemetry prune`` applies retention
(``edgefleet.deploy.retention``) and ``telemetry export`` streams raw reports to CSV or JSON.
They are separate so the table works offline, from a copy of ``fleet.db``, while one or more
long-running ``collect`` processes (or the demo) do the listening.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, fields
from datetime import UTC, datetime
from typing import IO

import click

from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.collector import DEFAULT_SHARED_GROUP, Collector, CollectorStats
from edgefleet.deploy.options import broker_option, db_option, json_option, open_store
from edgefleet.deploy.retention import parse_duration
from edgefleet.deploy.store import BenchmarkRow, StoreError, TelemetryStore
from edgefleet.deploy.store_backends import StoreLocation
from edgefleet.deploy.tables import render_telemetry, telemetry_records

EMPTY_HINT = "no telemetry yet: run `edgefleet collect` while devices report, or `edgefleet demo`"


@click.group("telemetry", invoke_without_command=True)
@db_option
@json_option
@click.pass_context
def telemetry(ctx: click.Context, db: StoreLocation, as_json: bool) -> None:
    """Latency, throughput, memory, power and energy per device and model.

    Shows the latest benchmark of each package on each device, as stored by `edgefleet collect`
    (or the demo). "(sim)" marks simulated devices: their latencies are the host's and their
    power is the profile's estimate, named in the POWER SOURCE column. `telemetry prune` and
    `telemetry export` manage the stored history.
    """
    if ctx.invoked_subcommand is not None:
        return
    records = []
    if db.exists():  # reading must not create an empty database where the user mistyped a path
        try:
            with TelemetryStore(db) as store:
                records = telemetry_records(store.latest_benchmarks(), store.devices())
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(records, indent=2))
    elif not records:
        click.echo(EMPTY_HINT, err=True)
    else:
        click.echo(render_telemetry(records))


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """An ISO date/time (UTC unless it says otherwise), Unix seconds, or a duration back from now."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: write a date (2026-11-01), a time (2026-11-01T12:00), Unix seconds, or an age (7d)",
            ctx=ctx, param=param) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@telemetry.command("prune")
@db_option
@click.option("--older-than", "older_than", required=True, callback=_duration, metavar="AGE",
              help="Prune benchmark reports sent longer ago than AGE (90s, 15m, 1h, 30d, 2w).")
@click.option("--downsample", callback=_duration, default=None, metavar="BUCKET",
              help="Keep pruned reports as per-device, per-package aggregates over buckets of BUCKET (e.g. 1h); "
                   "without it they are deleted.")
@json_option
def prune(db: StoreLocation, older_than: float, downsample: float | None, as_json: bool) -> None:
    """Apply retention: keep recent benchmark reports raw, and older ones only as aggregates (or not at all).

    The newest report of each package on each device is always kept. Device rows, deployment events
    and rollouts are never pruned. Safe to run while `edgefleet collect` runs, e.g. from cron:

      edgefleet telemetry prune --older-than 30d --downsample 1h
    """
    if not db.exists():
        raise click.ClickException(f"{db}: no telemetry database here")
    with open_store(db) as store:
        result = store.prune_benchmarks(time.time() - older_than, bucket_seconds=downsample)
    if as_json:
        click.echo(json.dumps(asdict(result)))
    else:
        click.echo(f"deleted {result.deleted} benchmark reports, wrote {result.rollups} aggregates, "
                   f"kept {result.kept_latest} older reports as the latest of their device and package", err=True)


_EXPORT_COLUMNS = [f.name for f in fields(BenchmarkRow) if f.name != "report_json"]


@telemetry.command("export")
@db_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True,
              help="csv: one row per report with the table's columns; json: one JSON report per line (JSON Lines), "
                   "as the device sent it.")
@click.option("--since", callback=_since, default=None, metavar="WHEN",
              help="Only reports sent since WHEN: a date (2026-11-01, UTC), a date and time, Unix seconds, or an age (7d).")
@click.option("--device", "device_id", default=None, metavar="ID", help="Only the reports of this device.")
@click.option("-o", "--output", type=click.File("w", encoding="utf-8", lazy=True), default="-", show_default=True,
              metavar="FILE", help="Where to write; - is standard output.")
def export(db: StoreLocation, fmt: str, since: float | None, device_id: str | None, output: IO[str]) -> None:
    """Stream raw benchmark reports, oldest first, to CSV or JSON Lines.

    Rows are read and written a page at a time, so exporting a large store needs little memory.
    Aggregates written by `telemetry prune --downsample` are not exported.
    """
    if not db.exists():
        raise click.ClickException(f"{db}: no telemetry database here")
    with open_store(db) as store:
        count = write_export(store.iter_benchmarks(since=since, device_id=device_id), output, fmt)
    click.echo(f"exported {count} benchmark reports", err=True)


def write_export(rows: Iterator[BenchmarkRow], out: IO[str], fmt: str) -> int:
    """Write ``rows`` to ``out`` as ``csv`` or ``json`` (JSON Lines); returns how many."""
    count = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_EXPORT_COLUMNS)
        for row in rows:
            writer.writerow([getattr(row, c) for c in _EXPORT_COLUMNS])
            count += 1
    else:
        for row in rows:
            out.write(row.report_json + "\n")
            count += 1
    return count


@click.command("collect")
@broker_option
@db_option
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How often to print the counts (when they changed).",
)
@click.option(
    "--shared",
    "shared_group",
    default=None,
    is_flag=False,
    flag_value=DEFAULT_SHARED_GROUP,
    metavar="GROUP",
    help=f"Share the load with the other collectors of GROUP (MQTT shared subscription; --shared alone: "
         f"{DEFAULT_SHARED_GROUP}). Each message goes to one of them; point them all at the same --db.",
)
@click.option(
    "--client-id",
    default=None,
    metavar="ID",
    help="Connect as ID with a persistent MQTT session: while this collector is down (a restart, an "
         "upgrade) the broker queues its messages and delivers them when it is back. Give each collector "
         "its own ID. Without it the session is clean and messages sent meanwhile are not kept for it.",
)
def collect(broker: BrokerURL, db: StoreLocation, interval: float, shared_group: str | None,
            client_id: str | None) -> None:
    """Listen to every device and store state, deployment events and benchmarks, until Ctrl-C.

    Malformed messages are logged and counted, never stored. Reconnects by itself if the broker
    goes away. Read the results with `edgefleet telemetry`. To spread a large fleet over several
    collectors, run each with `--shared` and the same PostgreSQL `--db` (docs/scaling.md).
    """
    try:
        store = TelemetryStore(db)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        collector = Collector(broker, store, client_id=client_id, shared_group=shared_group)
    except ValueError as exc:
        store.close()
        raise click.BadParameter(str(exc), param_hint="--shared") from None
    shared = f" in shared group {shared_group}" if shared_group else ""
    click.echo(f"collecting from {broker} into {db}{shared} (Ctrl-C to stop)", err=True)
    collector.start()
    shown = CollectorStats()
    subscribed = False
    next_report = time.monotonic() + interval
    try:
        while True:
            time.sleep(0.2)
            collector.check()
            if collector.subscribed != subscribed:
                subscribed = collector.subscribed
                click.echo("subscribed to all devices" if subscribed else "disconnected; reconnecting…", err=True)
            if time.monotonic() >= next_report:
                next_report += interval
                if collector.stats != shown:
                    shown = collector.stats
                    click.echo(_counts(shown), err=True)
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
        store.close()
    click.echo(_counts(collector.stats), err=True)


def _counts(s: CollectorStats) -> str:
    text = f"stored {s.states} states, {s.events} events, {s.benchmarks} benchmarks; rejected {s.rejected} malformed"
    return text + (f"; {s.store_errors} failed to store" if s.store_errors else "")
