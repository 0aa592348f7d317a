"""The agent's exceptions, and what a caller should do about each.

    EdgefleetError
    ├── TransportError       the broker or the network; retry with backoff
    ├── MessageError         an MQTT payload that does not match its schema; log and ignore
    ├── PackageError         a package that must not be installed; refuse, report, keep the old model
    │   ├── SignatureError   not signed by a trusted key, or the signature does not match
    │   └── IntegrityError   a hash or size that does not match what was promised
    ├── RuntimeLoadError     the runtime cannot load or run the model (missing runtime, bad model)
    ├── BenchmarkError       the model loaded but could not be measured
    └── ConfigError          a bad config file or setting, or a profile that cannot be detected;
                             also a ValueError; fix the configuration (the agent does not start)

Every exception carries a message that says what is wrong, where, and what to do.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base class of everything the agent raises on purpose."""


class TransportError(EdgefleetError):
    """The broker is unreachable or dropped us. Recoverable: reconnect with backoff."""


class MessageError(EdgefleetError):
    """A message on the wire does not match its schema.

    ``topic`` says where it came from, so the log line points at the sender.
    """

    def __init__(self, message: str, *, topic: str = "") -> None:
        super().__init__(f"{topic}: {message}" if topic else message)
        self.topic = topic


class PackageError(EdgefleetError):
    """A package that must not be installed. ``path`` names the package file when there is one."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class SignatureError(PackageError):
    """The package is not signed by a trusted key, or its signature does not verify."""


class IntegrityError(PackageError):
    """A size or sha256 in the package, or of a transfer, does not match what was declared."""


class RuntimeLoadError(EdgefleetError):
    """The inference runtime is missing, or cannot load or run the model."""


class BenchmarkError(EdgefleetError):
    """The model is installed but could not be benchmarked."""


class ConfigError(EdgefleetError, ValueError):
    """The agent's configuration is invalid. ``path`` names the config file when there is one."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
