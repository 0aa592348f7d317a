"""``edgefleet certs``: create the CA, the broker's certificate and client certificates for MQTT over TLS."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgefleet.deploy import certs
from edgefleet.deploy.options import edgefleet_home, json_option

F = TypeVar("F", bound=Callable[..., Any])


def _dir_option(fn: F) -> F:
    return click.option(
        "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Certificate directory. Default: $EDGEFLEET_HOME/pki (~/.edgefleet/pki).",
    )(fn)


def _force_option(fn: F) -> F:
    return click.option("--force", is_flag=True, help="Replace existing files.")(fn)


def _days_option(default: int) -> Callable[[F], F]:
    return click.option("--days", type=click.IntRange(min=1), default=default, show_default=True,
                        help="Days the certificate is valid.")


def _resolve(directory: Path | None) -> Path:
    return directory if directory is not None else edgefleet_home() / "pki"


def _report(issued: list[certs.IssuedCert], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([c.to_json() for c in issued], indent=2))
        return
    for c in issued:
        click.echo(f"{c.kind} {c.name}: {c.cert} (key {c.key}, valid until {c.not_after:%Y-%m-%d})")


@click.group()
def certs_command() -> None:
    """Create a private CA and the certificates for MQTT over TLS.

    \b
    A fleet's PKI in four commands (files go to ~/.edgefleet/pki unless --dir):
      edgefleet certs init                                 ca.crt, ca.key: the fleet CA
      edgefleet certs server --host mqtt.example --host 10.0.0.5
                                                           server.crt/.key for Mosquitto
      edgefleet certs device pi-kitchen pi-garage          clients/pi-kitchen.crt/.key ...
      edgefleet certs operator                             clients/operator.crt/.key for push, rollout ...

    A client certificate's common name is its identity: Mosquitto with `use_identity_as_username
    true` takes it as the user name that `edgefleet acl` grants topics to. Copy ca.crt and a
    device's own .crt and .key to the device (the agent's --tls-ca, --tls-cert, --tls-key); keep
    ca.key off the broker and the devices. Keys are written readable by their owner only, and
    nothing is overwritten without --force. See docs/security.md.
    """


@certs_command.command("init")
@click.option("--name", default="edgefleet CA", show_default=True, help="The CA's common name.")
@_days_option(certs.CA_DAYS)
@_dir_option
@_force_option
@json_option
def init(name: str, days: int, directory: Path | None, force: bool, as_json: bool) -> None:
    """Create the fleet CA (ca.crt, ca.key) that signs the broker's and the clients' certificates."""
    try:
        issued = certs.create_ca(_resolve(directory), name=name, days=days, force=force)
    except certs.CertError as exc:
        raise click.ClickException(str(exc)) from None
    _report([issued], as_json)


@certs_command.command("server")
@click.option("--host", "hosts", multiple=True, metavar="NAME|IP",
              help="A DNS name or IP address clients use to reach the broker (repeatable). "
                   "Default: localhost and 127.0.0.1.")
@_days_option(certs.SERVER_DAYS)
@_dir_option
@_force_option
@json_option
def server(hosts: tuple[str, ...], days: int, directory: Path | None, force: bool, as_json: bool) -> None:
    """Create the broker's certificate (server.crt, server.key), signed by the CA.

    Clients check that the host in their --broker URL is one of the --host names, so list every
    name and address devices use to reach the broker.
    """
    try:
        issued = certs.create_server(_resolve(directory), hosts=hosts or certs.DEFAULT_HOSTS, days=days, force=force)
    except certs.CertError as exc:
        raise click.ClickException(str(exc)) from None
    _report([issued], as_json)


@certs_command.command("device")
@click.argument("device_ids", nargs=-1, required=True, metavar="DEVICE_ID...")
@_days_option(certs.CLIENT_DAYS)
@_dir_option
@_force_option
@json_option
def device(device_ids: tuple[str, ...], days: int, directory: Path | None, force: bool, as_json: bool) -> None:
    """Create a client certificate for each device (clients/ID.crt, clients/ID.key); CN = the device id."""
    _clients(device_ids, days, directory, force, as_json)


@certs_command.command("operator")
@click.argument("name", default="operator")
@_days_option(certs.CLIENT_DAYS)
@_dir_option
@_force_option
@json_option
def operator(name: str, days: int, directory: Path | None, force: bool, as_json: bool) -> None:
    """Create the fleet operator's client certificate (clients/NAME.crt, .key), for push, rollout and the collector.

    NAME must match the operator identity given to `edgefleet acl --operator` (both default to "operator").
    """
    _clients((name,), days, directory, force, as_json)


def _clients(names: tuple[str, ...], days: int, directory: Path | None, force: bool, as_json: bool) -> None:
    issued = []
    try:
        for name in names:
            issued.append(certs.create_client(_resolve(directory), name, days=days, force=force))
    except certs.CertError as exc:
        _report(issued, as_json)
        raise click.ClickException(str(exc)) from None
    _report(issued, as_json)
