"""``edgefleet telemetry`` and ``edgefleet collect``: thin commands over the store and collector.

``collect`` listens to the broker and fills the SQLite store; ``telemetry`` reads the store and
prints it. They are separate so the table works offline, from a copy of ``fleet.db``, while one
long-running ``collect`` (or the demo) does the listening.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.collector import Collector, CollectorStats
from edgefleet.deploy.options import broker_option, db_option, json_option
from edgefleet.deploy.store import StoreError, TelemetryStore
from edgefleet.deploy.tables import render_telemetry, telemetry_records

EMPTY_HINT = "no telemetry yet: run `edgefleet collect` while devices report, or `edgefleet demo`"


@click.command("telemetry")
@db_option
@json_option
def telemetry(db: Path, as_json: bool) -> None:
    """Latency, throughput, memory, power and energy per device and model.

    Shows the latest benchmark of each package on each device, as stored by `edgefleet collect`
    (or the demo). "(sim)" marks simulated devices: their latencies are the host's and their
    power is the profile's estimate, named in the POWER SOURCE column.
    """
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
def collect(broker: BrokerURL, db: Path, interval: float) -> None:
    """Listen to every device and store state, deployment events and benchmarks, until Ctrl-C.

    Malformed messages are logged and counted, never stored. Reconnects by itself if the broker
    goes away. Read the results with `edgefleet telemetry`.
    """
    try:
        store = TelemetryStore(db)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    collector = Collector(broker, store)
    click.echo(f"collecting from {broker} into {db} (Ctrl-C to stop)", err=True)
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
