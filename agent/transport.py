"""Broker addresses and MQTT clients, shared by the agent and the fleet side.

A broker is named by a URL: ``mqtt://host:1883`` or ``mqtts://user:pass@host:8883``. paho-mqtt
does the protocol; this module only turns a URL into a configured client, so every command
accepts the same ``--broker`` and means the same thing by it.

TLS settings travel with the URL (``BrokerURL.with_tls``): the CA that signed the broker's
certificate, and this client's own certificate and key for brokers that require one. Anything
that is handed a ``BrokerURL`` therefore connects the same way, and ``make_client`` is the one
place that configures TLS. The broker's certificate is always verified, host name included;
``describe_connect_error`` turns a failed handshake into what went wrong and what to do.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


@dataclass(frozen=True, slots=True)
class BrokerURL:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host; write it as mqtt://HOST:PORT")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"broker URL {url!r} has an invalid port") from None
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def with_tls(
        self,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        password_file: Path | None = None,
    ) -> BrokerURL:
        """A copy with TLS files and a password read from ``password_file``; None leaves a setting as it is.

        Raises ValueError, naming the option to fix, for TLS files on a plain mqtt:// URL, a key
        without its certificate, a password file without a user name, or a file that cannot be read.
        """
        if (ca_file or cert_file or key_file) and not self.tls:
            raise ValueError(
                f"TLS files were given but the broker URL {self} is plain MQTT; write it as mqtts://{self.host}:PORT"
            )
        if key_file and not (cert_file or self.cert_file):
            raise ValueError("a client key (--tls-key) needs its certificate (--tls-cert) too")
        for what, path in (("CA certificate", ca_file), ("client certificate", cert_file), ("client key", key_file)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS {what} {path} does not exist; create one with `edgefleet certs`")
        password = self.password
        if password_file is not None:
            if not self.username:
                raise ValueError(
                    f"a password file ({password_file}) needs a user name: write the URL as mqtts://USER@{self.host}"
                )
            password = read_password_file(Path(password_file))
        return replace(
            self,
            ca_file=Path(ca_file) if ca_file else self.ca_file,
            cert_file=Path(cert_file) if cert_file else self.cert_file,
            key_file=Path(key_file) if key_file else self.key_file,
            password=password,
        )


def read_password_file(path: Path) -> str:
    """The first line of ``path``: a password kept out of URLs, unit files and process listings."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the password file {path}: {exc.strerror}") from None
    if not lines or not lines[0]:
        raise ValueError(f"the password file {path} is empty; put the password on its first line")
    return lines[0]


def make_client(url: BrokerURL, client_id: str | None = None, *, clean_start: bool = True) -> mqtt.Client:
    """A paho client (MQTT 3.1.1, callback API v2) configured for ``url``; not yet connected."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"edgefleet-{uuid.uuid4().hex[:12]}",
        clean_session=clean_start,
        protocol=mqtt.MQTTv311,
    )
    if url.username:
        client.username_pw_set(url.username, url.password)
    if url.tls:
        client.tls_set_context(tls_context(url))
    # paho keeps at most this many QoS>0 messages in flight; chunked uploads need more than the default 20.
    client.max_inflight_messages_set(64)
    return client


def tls_context(url: BrokerURL) -> ssl.SSLContext:
    """A client TLS context for ``url``: verifies the broker's certificate and host name; presents ours if set.

    Without ``ca_file`` the system's trusted CAs are used, which suits a broker with a public certificate.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        if url.ca_file is not None:
            context.load_verify_locations(cafile=str(url.ca_file))
        if url.cert_file is not None:
            context.load_cert_chain(str(url.cert_file), str(url.key_file) if url.key_file else None)
    except ssl.SSLError as exc:
        files = ", ".join(str(p) for p in (url.ca_file, url.cert_file, url.key_file) if p is not None)
        raise ValueError(f"cannot load the TLS files ({files}): {exc.reason or exc}; are they PEM, and is the key "
                         "the certificate's?") from None
    except OSError as exc:
        raise ValueError(f"cannot read the TLS file {exc.filename}: {exc.strerror}") from None
    return context


# OpenSSL verification codes (X509_V_ERR_*) worth their own explanation.
_VERIFY_HINTS = {
    9: "the broker's certificate is not valid yet; check this device's clock",
    10: "the broker's certificate has expired; issue a new one with `edgefleet certs server`",
    18: "the broker's certificate is self-signed and not the CA given; pass the CA that signed it with --tls-ca",
    19: "the broker's certificate was signed by a CA this client does not trust; pass that CA with --tls-ca",
    20: "the broker's certificate was signed by a CA this client does not trust; pass that CA with --tls-ca",
    62: "the broker's certificate does not name this host; connect by a name in its SANs, or reissue it with "
        "`edgefleet certs server --host NAME`",
    64: "the broker's certificate does not name this IP address; connect by a name in its SANs, or reissue it with "
        "`edgefleet certs server --host IP`",
}

# TLS alerts the broker sends when it refuses our certificate.
_ALERT_HINTS = {
    "CERTIFICATE_REQUIRED": "the broker requires a client certificate; pass --tls-cert and --tls-key",
    "UNKNOWN_CA": "the broker does not trust the CA that signed this client's certificate; use a certificate from "
                  "the broker's CA (`edgefleet certs device`)",
    "BAD_CERTIFICATE": "the broker refused this client's certificate; use one from the broker's CA",
    "CERTIFICATE_EXPIRED": "the broker says this client's certificate has expired; issue a new one with "
                           "`edgefleet certs device`",
    "WRONG_VERSION_NUMBER": "the broker did not answer with TLS; is this port a plain mqtt:// listener?",
}


def closed_before_connack(url: BrokerURL) -> str:
    """Why a broker hangs up before answering CONNECT, and what to do.

    With TLS 1.3 the broker checks a client certificate after the client's side of the handshake
    has completed, so a refused certificate shows up as a closed connection, not as an error.
    """
    if url.tls:
        return (f"the broker at {url} closed the TLS connection before accepting it: it most likely refused this "
                "client's certificate (missing, expired, or from another CA); pass --tls-cert and --tls-key from "
                "the broker's CA (`edgefleet certs device ID` or `edgefleet certs operator`)")
    return f"the broker at {url} closed the connection before accepting it; is this port a TLS (mqtts://) listener?"


def describe_connect_error(exc: BaseException, url: BrokerURL) -> str:
    """One line saying why connecting to ``url`` failed and what to do, for logs and error messages."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = _VERIFY_HINTS.get(exc.verify_code, "check --tls-ca")
        return f"TLS: cannot verify the broker at {url}: {exc.verify_message} ({hint})"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        hint = next((h for key, h in _ALERT_HINTS.items() if key in reason), None)
        return f"TLS handshake with {url} failed: {reason or exc}" + (f" ({hint})" if hint else "")
    if isinstance(exc, OSError):
        return f"cannot reach the broker at {url}: {exc.strerror or exc}"
    return f"cannot connect to the broker at {url}: {exc}"
