"""``edgefleet push``: a thin command over ``edgefleet.deploy.push``.

It parses options, calls the library, prints the result, and turns the library's errors into
one-line messages; everything about MQTT and packages lives in ``push.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent import keys, topics
from edgefleet.agent.errors import PackageError
from edgefleet.agent.messages import Deployment, DeploymentEvent, DeviceState
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.link import PushError
from edgefleet.deploy.options import ByteSize, broker_option, format_bytes, json_option
from edgefleet.deploy.push import (
    DEFAULT_CHUNK_SIZE,
    DeploymentWatcher,
    DeviceOutcome,
    fleet_states,
    push_package,
)

DEFAULT_WAIT = 120.0


def _check_id(what: str) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return topics.check_id(value, what)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


@click.command("push")
@click.argument("package", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--device", metavar="ID", callback=_check_id("device id"), help="The device to install it on.")
@click.option("--group", metavar="NAME", callback=_check_id("group name"), help="Every device in this group that has the package's profile (it is published for that profile).")
@broker_option
@click.option(
    "--chunk-size",
    type=ByteSize(minimum=1024, maximum=64 * 1024**2),
    default=DEFAULT_CHUNK_SIZE,
    metavar="SIZE",
    help="Bytes per MQTT message: 65536, 256KiB, 1MiB. Smaller suits brokers with a message size limit.  [default: 256KiB]",
)
@click.option(
    "--url",
    metavar="URL",
    help="Devices download the package from this http(s) URL (object storage, CDN) where you uploaded the same "
    "file; no chunks go through the broker. Each chunk is still checked against the hashes in the deployment.",
)
@click.option(
    "--rollback",
    is_flag=True,
    help="Go back to an older version on purpose. Devices refuse a version older than the newest they have "
    "installed (anti-rollback) unless the deployment carries a rollback permission signed with --key.",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EDGEFLEET_SIGNING_KEY",
    default=None,
    help="With --rollback: the private key (one the devices trust) that signs the permission.  "
    "[default: $EDGEFLEET_HOME/keys/signing.key]",
)
@click.option("--wait", is_flag=True, help="Wait until the devices report the package installed, or failed; exit 1 unless all succeed.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help=f"With --wait: how long to wait for the devices  [default: {DEFAULT_WAIT:g}]",
)
@json_option
@click.pass_context
def push(
    ctx: click.Context,
    package: Path,
    device: str | None,
    group: str | None,
    broker: BrokerURL,
    chunk_size: int,
    url: str | None,
    rollback: bool,
    key_path: Path | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Send PACKAGE (written by `edgefleet compile`) to a device or a group.

    The package and the deployment stay retained on the broker, so devices that are offline
    install it when they reconnect.

    \b
      edgefleet push out/digits-raspberry-pi-4.efpkg --device pi-kitchen --wait
      edgefleet push out/digits-raspberry-pi-4.efpkg --group kitchen
      edgefleet push out/digits-raspberry-pi-4.efpkg --group kitchen \\
          --url https://cdn.example/models/digits-raspberry-pi-4.efpkg
      edgefleet push out/digits-v1.efpkg --device pi-kitchen --rollback --key signing.key
    """
    if (device is None) == (group is None):
        raise click.UsageError("name exactly one target: --device ID or --group NAME")
    if timeout is not None and not wait:
        raise click.UsageError("--timeout applies only with --wait")
    if key_path is not None and not rollback:
        raise click.UsageError("--key signs a rollback: add --rollback")
    wait_s = timeout or DEFAULT_WAIT
    rollback_key = _rollback_key(key_path) if rollback else None
    outcomes: dict[str, DeviceOutcome] | None = None
    skipped: dict[str, str] = {}
    try:
        if not wait:
            deployment = push_package(
                package, broker=broker, device=device, group=group, chunk_size=chunk_size, url=url,
                rollback_key=rollback_key,
            )
        else:
            # Subscribe before pushing: events are not retained, and a nearby device answers fast.
            with DeploymentWatcher(broker) as watcher:
                deployment = push_package(
                    package, broker=broker, device=device, group=group, chunk_size=chunk_size, url=url,
                    rollback_key=rollback_key,
                )
                _echo_pushed(deployment, device, group, broker, err=as_json)
                if device is not None:
                    devices = [device]
                else:
                    assert group is not None
                    devices, skipped = _group_members(fleet_states(broker), group, deployment.profile)
                    for name, why in skipped.items():
                        click.echo(f"  {name}: not waiting, {why}", err=True)
                if devices:
                    click.echo(f"waiting up to {wait_s:g}s for {len(devices)} device(s)…", err=True)
                outcomes = watcher.wait(
                    deployment.deployment_id, devices, wait_s, on_event=_echo_event
                )
    except (PushError, PackageError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    if as_json:
        click.echo(json.dumps(_as_json(deployment, device, group, broker, outcomes, skipped), indent=2))
    elif outcomes is None:
        _echo_pushed(deployment, device, group, broker, err=False)
    else:
        _echo_outcomes(outcomes, wait_s)
    if outcomes is not None:
        if not outcomes:
            click.echo(
                f"no online device of group {group!r} runs profile {deployment.profile!r}; "
                "the deployment stays retained for when one connects",
                err=True,
            )
        if not all(o.ok for o in outcomes.values()):
            ctx.exit(1)


def _rollback_key(key_path: Path | None) -> Ed25519PrivateKey:
    from edgefleet.compiler.signing import default_key_path

    try:
        return keys.load_private(key_path or default_key_path(os.environ))
    except ValueError as exc:
        raise click.ClickException(f"--rollback needs the signing key: {exc}") from None


def _group_members(states: list[DeviceState], group: str, profile: str) -> tuple[list[str], dict[str, str]]:
    """Members worth waiting for, and the others with the reason they are skipped."""
    members, skipped = [], {}
    for s in states:
        if group not in s.groups:
            continue
        if s.status != "online":
            skipped[s.device_id] = "offline (it installs the package when it reconnects)"
        elif s.profile != profile:
            skipped[s.device_id] = f"its profile is {s.profile!r}, the package's {profile!r}"
        else:
            members.append(s.device_id)
    return members, skipped


def _echo_pushed(d: Deployment, device: str | None, group: str | None, broker: BrokerURL, *, err: bool) -> None:
    target = f"device {device}" if device else f"the {d.profile} devices of group {group}"
    ref = d.package
    click.echo(f"pushed {ref.id} to {target}", err=err)
    click.echo(f"  deployment  {d.deployment_id}", err=err)
    click.echo(
        f"  package     sha256 {ref.sha256[:16]}…, {format_bytes(ref.size)} in {ref.chunk_count()} "
        f"chunk(s) of {format_bytes(ref.chunk_size)}",
        err=err,
    )
    if ref.url:
        click.echo(f"  url         {ref.url}", err=err)
    if d.rollback:
        click.echo(f"  rollback    to version {d.rollback.version}, signed by key {d.rollback.signer}", err=err)
    click.echo(f"  broker      {broker}", err=err)


def _echo_event(e: DeploymentEvent) -> None:
    # Progress goes to stderr so stdout stays clean for --json.
    click.echo(f"  {e.device_id}: {e.phase}" + (f" — {e.error}" if e.error else ""), err=True)


def _echo_outcomes(outcomes: dict[str, DeviceOutcome], waited: float) -> None:
    for name, o in outcomes.items():
        if o.ok:
            click.echo(f"{name}: installed")
        elif o.finished:
            click.echo(f"{name}: failed — {o.error or 'no reason given'}")
        elif o.phase is None:
            click.echo(f"{name}: no answer within {waited:g}s (offline, or no agent running?)")
        else:
            click.echo(f"{name}: still {o.phase} after {waited:g}s")


def _as_json(
    d: Deployment,
    device: str | None,
    group: str | None,
    broker: BrokerURL,
    outcomes: dict[str, DeviceOutcome] | None,
    skipped: dict[str, str],
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "deployment": d.model_dump(mode="json"),
        "target": {"device": device} if device else {"group": group, "profile": d.profile},
        "broker": str(broker),
    }
    if outcomes is not None:
        result["devices"] = [
            {"device": o.device, "phase": o.phase.value if o.phase else None, "error": o.error, "ok": o.ok}
            for o in outcomes.values()
        ]
        result["skipped"] = skipped
    return result
