"""Per-device authorization for Mosquitto: the ACL file, password file and listener config ``edgefleet acl`` writes.

Under the ACL a device (its MQTT user name is its device id: the certificate's CN with
``use_identity_as_username``, or the password file's user name) can

    read   its own deploy and benchmark-request topics, its groups' deploy topics, package chunks,
           signing-key revocations
    write  its own state, telemetry, system and events topics

and nothing else; the operator identities can read and write everything under ``edgefleet/``.
Per-device rules are Mosquitto ``pattern`` lines with ``%u`` (one line serves every device,
and Mosquitto refuses the substitution for a user name containing ``+``, ``#`` or ``/``); group
membership needs a ``user`` block per device, built from a members file or ``--device``
flags. Package chunks are readable by every device because a device learns a package's hash
only from its deployment; packages are signed, so reading one grants nothing.

Topics are spelled by ``edgefleet.agent.topics``, so the ACL follows the wire contract.
"""

from __future__ import annotations

import csv
import io
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgefleet.agent import topics
from edgefleet.deploy.certs import ca_paths, server_paths, write_private

DEFAULT_OPERATOR = "operator"

# Topics of the device whose user name Mosquitto substitutes for %u.
_ME = "%u"
DEVICE_READS = (topics.device_deploy(_ME), topics.benchmark_requests(_ME), topics.package_chunks("+"),
                topics.ALL_REVOCATIONS)
DEVICE_WRITES = (topics.state(_ME), topics.telemetry(_ME), topics.system(_ME), topics.events(_ME))
OPERATOR_TOPICS = f"{topics.ROOT}/#"


class AclError(Exception):
    """The members file or a --device flag is invalid, a file exists, or mosquitto_passwd is missing."""


@dataclass(frozen=True, slots=True)
class AclFiles:
    """What ``write_acl`` wrote, as ``--json`` reports it."""

    acl: Path
    devices: int
    operators: tuple[str, ...]
    password_file: Path | None = None
    passwords: dict[str, Path] = field(default_factory=dict)  # identity -> file holding its password
    mosquitto_conf: Path | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "acl": str(self.acl),
            "devices": self.devices,
            "operators": list(self.operators),
            "password_file": str(self.password_file) if self.password_file else None,
            "passwords": {name: str(p) for name, p in self.passwords.items()},
            "mosquitto_conf": str(self.mosquitto_conf) if self.mosquitto_conf else None,
        }


def parse_device_spec(spec: str) -> tuple[str, list[str]]:
    """``pi-1:greenhouse,kitchen`` -> ("pi-1", ["greenhouse", "kitchen"]); ``pi-1`` -> ("pi-1", [])."""
    device, _, groups = spec.partition(":")
    return _check(device, "device id", spec), [_check(g, "group", spec) for g in groups.split(",") if g]


def load_members(path: Path) -> dict[str, list[str]]:
    """Group memberships from a file: YAML ``device: [group, ...]`` or CSV rows ``device,group``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AclError(f"cannot read the members file {path}: {exc.strerror}") from None
    if path.suffix.lower() == ".csv":
        return _members_from_csv(text, path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AclError(f"{path} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise AclError(f"{path}: expected a mapping of device id to its groups, like `pi-1: [greenhouse]`")
    members: dict[str, list[str]] = {}
    for device, groups in raw.items():
        where = f"{path}, device {device!r}"
        groups = [groups] if isinstance(groups, str) else (groups or [])
        if not isinstance(groups, list):
            raise AclError(f"{where}: the groups must be a list of names")
        members[_check(str(device), "device id", where)] = [_check(str(g), "group", where) for g in groups]
    return members


def _members_from_csv(text: str, path: Path) -> dict[str, list[str]]:
    members: dict[str, list[str]] = {}
    for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#") or (n == 1 and cells[:2] == ["device", "group"]):
            continue
        if len(cells) != 2:
            raise AclError(f"{path}, line {n}: expected two columns `device,group`, found {len(cells)}")
        where = f"{path}, line {n}"
        groups = members.setdefault(_check(cells[0], "device id", where), [])
        if cells[1]:
            groups.append(_check(cells[1], "group", where))
    return members


def merge_members(*sources: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """One device -> groups map from several sources; a device's groups are the union, in first-seen order."""
    merged: dict[str, list[str]] = {}
    for source in sources:
        for device, groups in source.items():
            have = merged.setdefault(device, [])
            have.extend(g for g in groups if g not in have)
    return merged


def render_acl(members: Mapping[str, Sequence[str]], operators: Sequence[str] = (DEFAULT_OPERATOR,)) -> str:
    """The Mosquitto ACL file text for these devices' groups and these operator identities."""
    for name in operators:
        _check(name, "operator identity", "--operator")
    clash = sorted(set(operators) & set(members))
    if clash:
        raise AclError(f"{clash[0]!r} is both an operator and a device; an identity must be one or the other")
    lines = [
        "# Mosquitto ACL for an edgefleet fleet, written by `edgefleet acl`: regenerate it rather than edit it.",
        "# A client's user name is its identity: the device id (certificate CN or password-file user).",
        "",
        "# Every device: its own topics.",
        *(f"pattern read {t}" for t in DEVICE_READS),
        *(f"pattern write {t}" for t in DEVICE_WRITES),
    ]
    for name in operators:
        lines += ["", "# The fleet operator: publishes deployments, reads every device.", f"user {name}",
                  f"topic readwrite {OPERATOR_TOPICS}"]
    for device, groups in sorted(members.items()):
        if groups:
            lines += ["", f"user {device}", *(f"topic read {topics.group_deploy(g, '+')}" for g in groups)]
    return "\n".join(lines) + "\n"


def render_mosquitto_conf(
    *,
    acl_file: Path,
    certs_dir: Path,
    tls_port: int = 8883,
    password_port: int | None = None,
    password_file: Path | None = None,
    bind: str | None = None,
    run_as: str | None = None,
) -> str:
    """A mosquitto.conf for the fleet: a certificate-only TLS listener and, optionally, a password one.

    Both listeners use the same ACL; the certificate's common name is the user name on the first.
    """
    if (password_port is None) != (password_file is None):
        raise AclError("a password listener needs both a port and a password file")
    ca, _ = ca_paths(certs_dir)
    cert, key = server_paths(certs_dir)
    tls = [f"cafile {ca.resolve()}", f"certfile {cert.resolve()}", f"keyfile {key.resolve()}"]
    host = f" {bind}" if bind else ""
    lines = ["# Mosquitto configuration for an edgefleet fleet, written by `edgefleet acl`.",
             "# Run it with: mosquitto -c THIS_FILE   (add persistence settings to keep retained deployments",
             "# across broker restarts)."]
    if run_as:
        lines.append(f"user {run_as}")
    lines += ["per_listener_settings false", "allow_anonymous false", f"acl_file {acl_file.resolve()}"]
    if password_file is not None:
        lines.append(f"password_file {password_file.resolve()}")
    lines += ["", "# Devices and the operator present a certificate from the fleet CA; its CN is the user name.",
              f"listener {tls_port}{host}", *tls, "require_certificate true", "use_identity_as_username true"]
    if password_port is not None:
        lines += ["", "# Clients without a certificate: user name and password, still over TLS.",
                  f"listener {password_port}{host}", *tls]
    return "\n".join(lines) + "\n"


def ensure_passwords(directory: Path, names: Iterable[str]) -> dict[str, Path]:
    """A password file per identity in ``directory`` (0600), generated once and kept on later runs."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in names:
        path = directory / name
        if not path.exists():
            write_private(path, (secrets.token_urlsafe(24) + "\n").encode())
        files[name] = path
    return files


def write_mosquitto_passwords(path: Path, passwords: Mapping[str, Path]) -> None:
    """Write Mosquitto's password file (salted hashes) for these identities with ``mosquitto_passwd``.

    Mosquitto's hash format is its own, so its tool writes it: the plain ``user:password`` lines go
    to ``path`` (mode 0600) and ``mosquitto_passwd -U`` hashes them in place, keeping passwords off
    the command line.
    """
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise AclError("mosquitto_passwd is not installed (it comes with Mosquitto, e.g. apt install mosquitto); "
                       "install it or drop --passwords and authenticate with certificates")
    plain = "".join(f"{name}:{p.read_text().splitlines()[0]}\n" for name, p in passwords.items())
    write_private(path, plain.encode())
    result = subprocess.run([tool, "-U", str(path)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        path.unlink(missing_ok=True)  # never leave the plain-text passwords behind
        raise AclError(f"mosquitto_passwd -U {path} failed: {result.stderr.strip() or result.stdout.strip()}")


def write_acl(
    acl: Path,
    members: Mapping[str, Sequence[str]],
    *,
    operators: Sequence[str] = (DEFAULT_OPERATOR,),
    passwords_dir: Path | None = None,
    mosquitto_conf: Path | None = None,
    certs_dir: Path | None = None,
    tls_port: int = 8883,
    password_port: int = 8884,
    bind: str | None = None,
    run_as: str | None = None,
    force: bool = False,
) -> AclFiles:
    """Write the ACL; with ``passwords_dir`` a password per identity and Mosquitto's password file
    (``passwords_dir/mosquitto.passwd``); with ``mosquitto_conf`` a config using them and ``certs_dir``."""
    if mosquitto_conf is not None:
        if certs_dir is None:
            raise AclError("a Mosquitto config needs the certificate directory (--certs), made by `edgefleet certs`")
        missing = [p for p in (*ca_paths(certs_dir)[:1], *server_paths(certs_dir)) if not p.is_file()]
        if missing:
            raise AclError(f"{missing[0]} is missing: create the CA and the broker's certificate first "
                           f"(`edgefleet certs init --dir {certs_dir}`, `edgefleet certs server --dir {certs_dir}`)")
    password_file = passwords_dir / "mosquitto.passwd" if passwords_dir is not None else None
    outputs = [p for p in (acl, password_file, mosquitto_conf) if p is not None]
    existing = [p for p in outputs if p.exists()]
    if existing and not force:
        raise AclError(f"{existing[0]} already exists; --force replaces it")
    acl_text = render_acl(members, operators)
    conf_text = None
    if mosquitto_conf is not None and certs_dir is not None:
        conf_text = render_mosquitto_conf(
            acl_file=acl, certs_dir=certs_dir, tls_port=tls_port, bind=bind, run_as=run_as,
            password_port=password_port if password_file else None, password_file=password_file,
        )
    passwords: dict[str, Path] = {}
    if passwords_dir is not None and password_file is not None:
        passwords = ensure_passwords(passwords_dir / "clients", [*operators, *members])
        write_mosquitto_passwords(password_file, passwords)
    acl.parent.mkdir(parents=True, exist_ok=True)
    acl.write_text(acl_text)
    if mosquitto_conf is not None and conf_text is not None:
        mosquitto_conf.parent.mkdir(parents=True, exist_ok=True)
        mosquitto_conf.write_text(conf_text)
    return AclFiles(acl=acl, devices=len(members), operators=tuple(operators), password_file=password_file,
                    passwords=passwords, mosquitto_conf=mosquitto_conf)


def _check(value: str, what: str, where: str) -> str:
    try:
        return topics.check_id(value, what)
    except ValueError as exc:
        raise AclError(f"{where}: {exc}") from None
