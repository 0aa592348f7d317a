"""``edgefleet acl``: write the Mosquitto ACL (and optionally passwords and a config) that confine each device."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgefleet.deploy import acl
from edgefleet.deploy.options import edgefleet_home, json_option


def _parse_devices(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, list[str]]:
    try:
        return acl.merge_members(*(dict([acl.parse_device_spec(v)]) for v in values))
    except acl.AclError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command("acl")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The ACL file to write (Mosquitto's acl_file).")
@click.option("--device", "devices", multiple=True, metavar="ID[:GROUP,...]", callback=_parse_devices,
              help="A device and the groups it belongs to, e.g. pi-1:greenhouse,kitchen (repeatable).")
@click.option("--members", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Group memberships from a file: YAML `pi-1: [greenhouse, kitchen]`, or CSV rows `device,group`.")
@click.option("--operator", "operators", multiple=True, metavar="NAME",
              help=f"An identity allowed to publish deployments and read every device (repeatable). "
                   f"Default: {acl.DEFAULT_OPERATOR}.")
@click.option("--passwords", "passwords_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Also give every identity a password: one file per identity in DIR/clients/ (kept on later "
                   "runs) and Mosquitto's password file DIR/mosquitto.passwd (needs mosquitto_passwd).")
@click.option("--mosquitto-conf", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a mosquitto.conf with a TLS listener that requires certificates and, with "
                   "--passwords, a TLS listener for user names and passwords.")
@click.option("--certs", "certs_dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Certificate directory for --mosquitto-conf. Default: $EDGEFLEET_HOME/pki.")
@click.option("--port", "tls_port", type=click.IntRange(1, 65535), default=8883, show_default=True,
              help="Port of the certificate listener in --mosquitto-conf.")
@click.option("--password-port", type=click.IntRange(1, 65535), default=8884, show_default=True,
              help="Port of the password listener in --mosquitto-conf.")
@click.option("--bind", metavar="ADDRESS", help="Address the listeners in --mosquitto-conf bind to. Default: all.")
@click.option("--run-as", metavar="USER",
              help="Mosquitto's `user` setting in --mosquitto-conf: the account it drops to when started as root, "
                   "which must be able to read server.key and the password file. Default: Mosquitto's (mosquitto).")
@click.option("--force", is_flag=True, help="Replace existing files (passwords already issued are kept).")
@json_option
def acl_command(output: Path, devices: dict[str, list[str]], members: Path | None, operators: tuple[str, ...],
                passwords_dir: Path | None, mosquitto_conf: Path | None, certs_dir: Path | None, tls_port: int,
                password_port: int, bind: str | None, run_as: str | None, force: bool, as_json: bool) -> None:
    """Write a Mosquitto ACL under which each device reads and writes only its own topics.

    A device (user name = device id, from its certificate's CN or a password file) may read its
    own deployments and benchmark requests, its groups' deployments, package chunks and key
    revocations, and write only its own state, telemetry, system samples and events. The operator
    identities publish deployments and read everything.

    \b
    Certificates only, groups from flags:
      edgefleet acl -o /etc/mosquitto/edgefleet.acl --device pi-1:greenhouse --device pi-2:greenhouse,kitchen
    \b
    Groups from a file, passwords and a complete Mosquitto config:
      edgefleet acl -o fleet/edgefleet.acl --members fleet/members.yaml --passwords fleet/passwords \\
          --mosquitto-conf fleet/mosquitto.conf
      mosquitto -c fleet/mosquitto.conf

    Devices not in any group need no entry: one `pattern` line covers every device. Rerun the
    command (with --force) when group membership changes, and signal Mosquitto (SIGHUP) to reload
    the ACL. See docs/security.md.
    """
    try:
        memberships = acl.merge_members(acl.load_members(members) if members else {}, devices)
        written = acl.write_acl(
            output, memberships, operators=operators or (acl.DEFAULT_OPERATOR,), passwords_dir=passwords_dir,
            mosquitto_conf=mosquitto_conf, certs_dir=certs_dir or edgefleet_home() / "pki", tls_port=tls_port,
            password_port=password_port, bind=bind, run_as=run_as, force=force,
        )
    except acl.AclError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(written.to_json(), indent=2))
        return
    groups = sum(1 for g in memberships.values() if g)
    click.echo(f"ACL: {written.acl} ({groups} devices with groups; operators: {', '.join(written.operators)})")
    if written.password_file is not None:
        click.echo(f"Mosquitto password file: {written.password_file}; "
                   f"each identity's password in {written.password_file.parent / 'clients'}/NAME")
    if written.mosquitto_conf is not None:
        click.echo(f"Mosquitto config: {written.mosquitto_conf} (run: mosquitto -c {written.mosquitto_conf})")
