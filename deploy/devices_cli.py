"""``edgefleet devices``: a thin command over ``edgefleet.deploy.registry`` and the store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgefleet.agent.labels import parse_labels
from edgefleet.deploy.options import db_option, json_option
from edgefleet.deploy.registry import (
    STATUSES,
    DeviceFilter,
    RegistryError,
    device_records,
    render_devices,
    select_devices,
)
from edgefleet.deploy.store import StoreError, TelemetryStore

EMPTY_HINT = "no devices known yet: run `edgefleet collect` while devices are connected, or `edgefleet demo`"


def parse_label_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """Click callback for a repeatable ``--label KEY=VALUE``: the labels as a dict, or a usage error saying why."""
    try:
        return parse_labels(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command("devices")
@click.option("--profile", metavar="NAME", help="Only devices with this hardware profile.")
@click.option("--group", metavar="NAME", help="Only members of this group.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", callback=parse_label_option,
              help="Only devices with this label, as the agent reports it (`edgefleet agent --label`); "
                   "repeat for devices with all of them.")
@click.option("--status", type=click.Choice(STATUSES), help="Only online or only offline devices.")
@db_option
@json_option
def devices(profile: str | None, group: str | None, labels: dict[str, str], status: str | None, db: Path,
            as_json: bool) -> None:
    """The fleet's devices, from the state each one keeps retained on the broker.

    Lists what `edgefleet collect` (or a rollout, or the demo) stored: profile, "(sim)" for
    simulated devices, online or offline, groups, labels, installed model, agent version,
    runtimes and when the device was last heard from.

    \b
      edgefleet devices
      edgefleet devices --group kitchen --status online
      edgefleet devices --label site=greenhouse --label floor=2
      edgefleet devices --profile raspberry-pi-4 --json
    """
    try:
        where = DeviceFilter(profile=profile, group=group, status=status, labels=labels)
        rows = []
        if db.exists():  # reading must not create an empty database where the user mistyped a path
            with TelemetryStore(db) as store:
                rows = select_devices(store.devices(), where)
    except (RegistryError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    records = device_records(rows)
    if as_json:
        click.echo(json.dumps(records, indent=2))
    elif not records:
        click.echo(EMPTY_HINT, err=True)
    else:
        click.echo(render_devices(records))
