"""``edgefleet devices``: a thin command over ``edgefleet.deploy.registry`` and the store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgefleet.deploy.options import db_option, json_option
from edgefleet.deploy.registry import STATUSES, DeviceFilter, RegistryError, device_records, render_devices, select_devices
from edgefleet.deploy.store import StoreError, TelemetryStore

EMPTY_HINT = "no devices known yet: run `edgefleet collect` while devices are connected, or `edgefleet demo`"


def _parse_label(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, eq, val = value.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", ctx=ctx, param=param)
        labels[key] = val
    return labels


@click.command("devices")
@click.option("--profile", metavar="NAME", help="Only devices with this hardware profile.")
@click.option("--group", metavar="NAME", help="Only members of this group.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", callback=_parse_label,
              help="Only devices with this label (not in the protocol yet: an error until agents report labels).")
@click.option("--status", type=click.Choice(STATUSES), help="Only online or only offline devices.")
@db_option
@json_option
def devices(profile: str | None, group: str | None, labels: dict[str, str], status: str | None, db: Path,
            as_json: bool) -> None:
    """The fleet's devices, from the state each one keeps retained on the broker.

    Lists what `edgefleet collect` (or a rollout, or the demo) stored: profile, "(sim)" for
    simulated devices, online or offline, groups, installed model, agent version, runtimes and
    when the device was last heard from.

    \b
      edgefleet devices
      edgefleet devices --group kitchen --status online
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
