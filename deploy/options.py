"""Command-line options shared by the fleet commands, as reusable click decorators.

Every command that talks to devices takes the same ``--broker``, every command that reads the
telemetry store the same ``--db``, and every command with machine-readable output the same
``--json``; defining each once keeps their names, defaults and help identical. ``open_store`` is
how those commands open the store ``--db`` names. This is the only place that reads the
environment (``EDGEFLEET_BROKER``, ``EDGEFLEET_HOME``).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from edgefleet.agent.transport import DEFAULT_BROKER, BrokerURL
from edgefleet.deploy.store import StoreError, TelemetryStore
from edgefleet.deploy.store_backends import StoreLocation

F = TypeVar("F", bound=Callable[..., Any])

BROKER_ENV = "EDGEFLEET_BROKER"
HOME_ENV = "EDGEFLEET_HOME"


def edgefleet_home() -> Path:
    """Where the fleet side keeps its state: ``$EDGEFLEET_HOME``, else ``~/.edgefleet``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".edgefleet")


def default_db_path() -> Path:
    return edgefleet_home() / "fleet.db"


def _parse_broker(ctx: click.Context, param: click.Parameter, value: str) -> BrokerURL:
    try:
        return BrokerURL.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def broker_option(fn: F) -> F:
    """``--broker URL`` and its TLS options -> one ``BrokerURL`` argument named ``broker``.

    ``--tls-ca``, ``--tls-cert``, ``--tls-key`` and ``--password-file`` are folded into the URL
    (``BrokerURL.with_tls``), so the command and everything it calls see a single value.
    """

    @functools.wraps(fn)
    def with_tls(*args: Any, tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None,
                 password_file: Path | None, **kwargs: Any) -> Any:
        try:
            kwargs["broker"] = kwargs["broker"].with_tls(
                ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key, password_file=password_file
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--broker and its TLS options") from None
        return fn(*args, **kwargs)

    file_type = click.Path(exists=True, dir_okay=False, path_type=Path)
    options = [
        click.option(
            "--broker",
            default=DEFAULT_BROKER,
            show_default=True,
            envvar=BROKER_ENV,
            show_envvar=True,
            metavar="URL",
            callback=_parse_broker,
            help="MQTT broker: mqtt://HOST:PORT, or mqtts://USER@HOST:8883 for TLS.",
        ),
        click.option("--tls-ca", type=file_type, envvar="EDGEFLEET_TLS_CA", show_envvar=True, metavar="PEM",
                     help="CA certificate that signed the broker's (mqtts:// only). Default: the system's CAs."),
        click.option("--tls-cert", type=file_type, envvar="EDGEFLEET_TLS_CERT", show_envvar=True, metavar="PEM",
                     help="Client certificate, for brokers that require one (`edgefleet certs operator`)."),
        click.option("--tls-key", type=file_type, envvar="EDGEFLEET_TLS_KEY", show_envvar=True, metavar="PEM",
                     help="The client certificate's private key."),
        click.option("--password-file", type=file_type, envvar="EDGEFLEET_PASSWORD_FILE", show_envvar=True,
                     metavar="FILE", help="Read the password for the URL's user name from this file's first line."),
    ]
    for option in reversed(options):
        with_tls = option(with_tls)
    return with_tls  # type: ignore[return-value]


def json_option(fn: F) -> F:
    """``--json`` -> a bool argument named ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def _parse_db(ctx: click.Context, param: click.Parameter, value: str | None) -> StoreLocation:
    try:
        return StoreLocation.parse(value) if value else StoreLocation.parse(default_db_path())
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def parse_optional_db(ctx: click.Context, param: click.Parameter, value: str | None) -> StoreLocation | None:
    """A click callback for options that name a store only when given (``compile --fleet-db``)."""
    return _parse_db(ctx, param, value) if value else None


def db_option(fn: F) -> F:
    """``--db PATH|URL`` -> a ``StoreLocation`` argument named ``db``; defaults to ``$EDGEFLEET_HOME/fleet.db``.

    A ``StoreLocation`` has ``exists()`` and prints as its path, so commands written for a SQLite
    ``Path`` keep working; ``TelemetryStore`` opens either kind.
    """
    return click.option(
        "--db",
        default=None,
        metavar="PATH|URL",
        callback=_parse_db,
        help=(
            "Telemetry database: a SQLite file (PATH or sqlite:///PATH) or PostgreSQL "
            f"(postgresql://USER@HOST/DB). Default: ${HOME_ENV}/fleet.db, ${HOME_ENV} defaulting to ~/.edgefleet."
        ),
    )(fn)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


class ByteSize(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.5; we support 8.1
    """A size such as ``65536``, ``256KiB`` or ``1MiB``, within [minimum, maximum] bytes."""

    name = "size"

    def __init__(self, minimum: int = 1, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            size = value
        else:
            m = _SIZE.match(str(value))
            unit = m.group(2).lower() if m else ""
            if not m or unit not in _UNITS:
                self.fail(f"{value!r} is not a size: write bytes, or a number with KiB, MiB, kB or MB", param, ctx)
            size = int(float(m.group(1)) * _UNITS[unit])
        if size < self.minimum or (self.maximum is not None and size > self.maximum):
            upper = f" and {format_bytes(self.maximum)}" if self.maximum is not None else ""
            self.fail(f"{value} is out of range: use between {format_bytes(self.minimum)}{upper}", param, ctx)
        return size


def format_bytes(n: float) -> str:
    """``262144`` -> ``256 KiB``; one decimal when it is not a whole number of units."""
    if n < 1024:
        return f"{n:.0f} B"
    value, unit = (n / 1024, "KiB") if n < 1024**2 else (n / 1024**2, "MiB")
    return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"


@contextmanager
def open_store(db: Path | StoreLocation, *, flag: str | None = None) -> Iterator[TelemetryStore]:
    """The telemetry store at ``db``; a store that cannot be opened is a usage error saying why
    (naming ``flag``, e.g. ``--fleet-db``, when the option is not the usual ``--db``)."""
    try:
        store = TelemetryStore(db)
    except StoreError as exc:
        raise click.ClickException(f"{flag}: {exc}" if flag else str(exc)) from None
    with store:
        yield store
