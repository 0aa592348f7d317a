"""A small private PKI for the fleet's MQTT broker: one CA, the broker's certificate, one per client.

The layout of a certificate directory (``$EDGEFLEET_HOME/pki`` by default):

    ca.crt  ca.key                  the fleet CA; ca.key signs everything else, keep it offline
    server.crt  server.key          the broker's certificate, with the host names and IPs it is reached by
    clients/NAME.crt  NAME.key      a device (NAME = device id) or the operator; CN = NAME

A client certificate's common name is the identity Mosquitto sees with
``use_identity_as_username true``, which is what the ACL from ``edgefleet acl`` grants topics to.
Keys are EC P-256 (small and fast on a Raspberry Pi) and written with mode 0600; nothing is
overwritten unless ``force`` is set. The ``cryptography`` package does the X.509 work.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.agent import topics

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 3650
SERVER_DAYS = 825
CLIENT_DAYS = 1825


class CertError(Exception):
    """A certificate could not be created: a file exists, the CA is missing, or a name is invalid."""


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """One certificate written to disk, as ``--json`` reports it."""

    kind: str  # "ca", "server" or "client"
    name: str
    cert: Path
    key: Path
    not_after: dt.datetime
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "cert": str(self.cert),
            "key": str(self.key),
            "not_after": self.not_after.isoformat(),
            "sha256": self.sha256,
        }


def ca_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "ca.crt", directory / "ca.key"


def server_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "server.crt", directory / "server.key"


def client_paths(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / "clients" / f"{name}.crt", directory / "clients" / f"{name}.key"


def create_ca(directory: Path, *, name: str = "edgefleet CA", days: int = CA_DAYS, force: bool = False) -> IssuedCert:
    """Write a new self-signed CA to ``directory``; refuse to replace one unless ``force``."""
    cert_path, key_path = ca_paths(directory)
    _check_free([cert_path, key_path], force, "--force replaces it, and every certificate it signed stops working")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write("ca", name, cert, key, cert_path, key_path)


def create_server(
    directory: Path, *, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = SERVER_DAYS, force: bool = False
) -> IssuedCert:
    """Write the broker's certificate, valid for ``hosts`` (DNS names and IP addresses), signed by the CA."""
    if not hosts:
        raise CertError("a server certificate needs at least one host name or IP address (--host)")
    cert_path, key_path = server_paths(directory)
    _check_free([cert_path, key_path], force, "--force replaces it")
    sans = [_san(h) for h in hosts]
    cert, key = _issue(directory, hosts[0], days, ExtendedKeyUsageOID.SERVER_AUTH, x509.SubjectAlternativeName(sans))
    return _write("server", hosts[0], cert, key, cert_path, key_path)


def create_client(directory: Path, name: str, *, days: int = CLIENT_DAYS, force: bool = False) -> IssuedCert:
    """Write a client certificate whose CN is ``name`` (a device id, or the operator's identity)."""
    try:
        topics.check_id(name, "client name")
    except ValueError as exc:
        raise CertError(str(exc)) from None
    cert_path, key_path = client_paths(directory, name)
    _check_free([cert_path, key_path], force, "--force replaces it")
    cert, key = _issue(directory, name, days, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    return _write("client", name, cert, key, cert_path, key_path)


def _issue(
    directory: Path,
    common_name: str,
    days: int,
    usage: x509.ObjectIdentifier,
    sans: x509.SubjectAlternativeName | None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    end = min(end, ca_cert.not_valid_after_utc)  # a certificate cannot outlive its CA in any verifier
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans is not None:
        builder = builder.add_extension(sans, critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key in ``directory``, or a CertError saying to run ``edgefleet certs init``."""
    cert_path, key_path = ca_paths(directory)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertError(
            f"no CA in {directory} ({exc.filename} is missing); create one with `edgefleet certs init`"
        ) from None
    except ValueError as exc:
        raise CertError(f"the CA in {directory} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path} is not an EC key; create the CA with `edgefleet certs init`")
    return cert, key


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise CertError(f"a certificate must be valid for at least 1 day, not {days}")
    # Backdated a little so a device whose clock lags the CA's still accepts a fresh certificate.
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=1), now + dt.timedelta(days=days)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=not cert_sign, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() or c in "/:@" for c in host):
        raise CertError(f"{host!r} is neither a host name nor an IP address")
    return x509.DNSName(host)


def _check_free(paths: Sequence[Path], force: bool, consequence: str) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise CertError(f"{existing[0]} already exists; {consequence}")


def _write(
    kind: str, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
) -> IssuedCert:
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(key_path, key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return IssuedCert(
        kind=kind, name=name, cert=cert_path, key=key_path, not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, from the first byte (no window with wider permissions)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
