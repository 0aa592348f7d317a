"""``edgefleet demo``: the whole path on this machine, with nothing installed beforehand."""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType

import click

from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.demo import DEFAULT_PROFILES, DemoError, DemoResult, run_demo
from edgefleet.deploy.tables import telemetry_records, telemetry_table

SIMULATION_NOTE = (
    "Simulated devices: latencies are this host's, not the boards'; power and energy are the "
    "profiles' estimates (source 'estimate'), not measurements."
)


@click.command()
@click.option("--profile", "profiles", multiple=True, default=DEFAULT_PROFILES, show_default=True,
              help="Simulate one device per profile (repeatable; see `edgefleet profiles`).")
@click.option("--broker", default=None, metavar="URL",
              help="Use this MQTT broker instead of starting an embedded one.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the model, packages, device data and logs here (default: a temporary directory).")
@click.option("--keep", is_flag=True, help="Keep the broker and devices running until Ctrl-C, to explore.")
@click.option("--json", "as_json", is_flag=True, help="Print the telemetry as JSON instead of a table.")
def demo(profiles: tuple[str, ...], broker: str | None, workdir: Path | None, keep: bool, as_json: bool) -> None:
    """Compile a model for three hardware profiles, deploy it to simulated devices, show their telemetry.

    \b
    What happens, all on this machine:
      1. an MQTT broker starts in-process (or --broker points at yours)
      2. a small MLP is trained on scikit-learn's digits and compiled for each profile
         (fp32 and calibrated int8 candidates; the best that keeps accuracy is signed and packaged)
      3. one real agent process per profile starts in simulated mode
      4. each device receives its package over MQTT, verifies, installs and benchmarks it
      5. the collector stores the telemetry and the table below is printed

    Takes about a minute. With --keep, everything stays up and the command prints how to look
    around (`edgefleet telemetry --db ...`, `edgefleet push ... --broker ...`).
    """
    say = (lambda _msg: None) if as_json else click.echo

    def show(result: DemoResult) -> None:
        if as_json:
            click.echo(json.dumps({"simulated": True, "note": SIMULATION_NOTE,
                                   "devices": telemetry_records(result.rows)}, indent=2))
            return
        click.echo()
        click.echo(telemetry_table(result.rows))
        click.echo()
        click.echo(SIMULATION_NOTE)

    def show_and_wait(result: DemoResult) -> None:
        show(result)
        click.echo(click.style("\nEverything is still running. In another terminal:", bold=True), err=as_json)
        click.echo(f"  edgefleet telemetry --db {result.db_path}", err=as_json)
        for c in result.compiled:
            click.echo(f"  edgefleet push {c.package_path} --device sim-{c.profile} --broker {result.broker} --wait",
                       err=as_json)
        click.echo("Press Ctrl-C to stop.", err=as_json)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopping the devices and the broker", err=as_json)

    signal.signal(signal.SIGTERM, _interrupt)  # stop the devices on `kill` too, not only on Ctrl-C
    url = BrokerURL.parse(broker) if broker else None
    with tempfile.TemporaryDirectory(prefix="edgefleet-demo-") as tmp:
        try:
            result = run_demo(workdir or Path(tmp), profiles=profiles, broker=url, say=say,
                              keep=show_and_wait if keep else None)
        except (DemoError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    if not keep:
        show(result)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
