"""``edgefleet dashboard``: serve the web dashboard over the telemetry store, optionally collecting too.

A thin command: it opens the store, builds the app (``edgefleet.deploy.dashboard.app``), runs
uvicorn, and with ``--collect`` runs a ``Collector`` in the same process so that one command
gives a live dashboard. Web dependencies are imported when the command runs, so the rest of the
CLI works without them.
"""

from __future__ import annotations

import socket
from pathlib import Path

import click

from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.options import broker_option, db_option
from edgefleet.deploy.store import StoreError, TelemetryStore


@click.command("dashboard")
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="Address to listen on; 0.0.0.0 serves other machines too (the dashboard has no login).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, metavar="PORT",
              help="TCP port to listen on.")
@broker_option
@click.option("--collect", is_flag=True,
              help="Also run the collector in this process: listen to every device on --broker and store what they send.")
@click.option("--poll", type=click.FloatRange(min=0.5), default=3.0, show_default=True, metavar="SECONDS",
              help="How often the pages refresh from their JSON twins.")
def dashboard(db: Path, host: str, port: int, broker: BrokerURL, collect: bool, poll: float) -> None:
    """Serve a web dashboard of the fleet: devices, per-device charts, models and rollouts.

    Each page has a JSON twin (/devices and /devices.json, ...) and updates live; /metrics
    serves the fleet in the Prometheus text format. The pages read the telemetry store that
    `edgefleet collect` fills; with --collect the dashboard collects itself, so one command
    gives a live view. Stop it with Ctrl-C.

    \b
      edgefleet dashboard --collect --broker mqtt://localhost:1883
      edgefleet dashboard --db fleet.db --host 0.0.0.0 --port 8080
    """
    import uvicorn

    from edgefleet.deploy.collector import Collector
    from edgefleet.deploy.dashboard.app import create_app

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") from None
    try:
        store = TelemetryStore(db)
    except StoreError as exc:
        listener.close()
        raise click.ClickException(str(exc)) from None
    collector = Collector(broker, store) if collect else None
    try:
        if collector is not None:
            click.echo(f"collecting from {broker} into {db}", err=True)
            collector.start()
        click.echo(f"dashboard of {db} at http://{host}:{port}/ (Ctrl-C to stop)", err=True)
        config = uvicorn.Config(create_app(store, poll_seconds=poll), host=host, port=port, log_level="warning")
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        if collector is not None:
            collector.stop()
        listener.close()
        store.close()
