"""The agent's config file: ``/etc/edgefleet/agent.yaml`` unless ``--config`` or ``EDGEFLEET_CONFIG`` says otherwise.

The keys are the command-line options with underscores (``device_id`` for ``--device-id``), and
``trust`` and ``groups`` take a list (or one value). Precedence, highest first:

    command-line flag  >  environment variable (EDGEFLEET_*)  >  config file  >  built-in default

Unknown keys and mistyped values are errors that name the file and the key, so a typo in a
config file stops the agent at start instead of being silently ignored for a year. Relative
paths in the file are relative to the file's directory.

    broker: mqtts://device:secret@fleet.example:8883
    trust: [/etc/edgefleet/signing.pub]
    groups: [greenhouse]
    labels: {site: greenhouse, floor: "2"}
    idle_seconds: 5
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.agent.errors import ConfigError
from edgefleet.agent.labels import check_labels

DEFAULT_CONFIG = Path("/etc/edgefleet/agent.yaml")

# Config key -> the agent command's parameter name, where they differ.
PARAMETER_NAMES = {"profile": "profile_name", "trust": "trusted"}


class AgentConfig(BaseModel):
    """Every key of the config file; a missing key leaves the option to its environment variable or default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: str | None = Field(default=None, description="MQTT broker URL.")
    device_id: str | None = None
    profile: str | None = Field(default=None, description="Profile name or file; detected when absent.")
    data_dir: Path | None = None
    trust: list[Path] | None = Field(default=None, description="Public keys or directories of keys.")
    groups: list[str] | None = None
    labels: dict[str, str] | None = Field(default=None, description="KEY: VALUE labels the device reports.")
    simulate: bool | None = None
    warmup: int | None = Field(default=None, ge=0)
    runs: int | None = Field(default=None, ge=1)
    max_seconds: float | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, ge=0)
    idle_seconds: float | None = Field(default=None, ge=0)
    sysfs: Path | None = None
    proc: Path | None = None
    vcgencmd: str | None = None
    system_interval: float | None = Field(default=None, ge=0)
    keep_versions: int | None = Field(default=None, ge=0, description="Previous models kept on disk for rollback.")
    tls_ca: Path | None = Field(default=None, description="CA certificate that signed the broker's.")
    tls_cert: Path | None = Field(default=None, description="This device's client certificate.")
    tls_key: Path | None = Field(default=None, description="The client certificate's private key.")
    password_file: Path | None = Field(default=None, description="File whose first line is the MQTT password.")

    @field_validator("trust", "groups", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value

    @field_validator("labels", mode="before")
    @classmethod
    def _label_values_as_text(cls, value: Any) -> Any:
        # YAML reads `floor: 2` as an int and `canary:` as None; a label is text, so take them as written.
        if isinstance(value, dict):
            return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else check_labels(value)

    def as_defaults(self) -> dict[str, Any]:
        """The keys that are set, by command parameter name: a click ``default_map``."""
        defaults = {PARAMETER_NAMES.get(k, k): v for k, v in self.model_dump(exclude_none=True).items()}
        if "labels" in defaults:  # the --label option takes KEY=VALUE strings
            defaults["labels"] = [f"{k}={v}" for k, v in defaults["labels"].items()]
        return defaults


def _relative_to(base: Path, value: Path) -> Path:
    value = value.expanduser()
    return value if value.is_absolute() else base / value


def load_config(path: Path, *, required: bool = True) -> AgentConfig:
    """Read and validate ``path``; a missing file is an empty config unless ``required``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError("no such config file", path=str(path)) from None
        return AgentConfig()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror}", path=str(path)) from None
    except UnicodeDecodeError as exc:  # found by bench/fuzz_atheris.py
        raise ConfigError(f"not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8",
                          path=str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"not valid YAML{line}: {getattr(exc, 'problem', exc)}", path=str(path)) from None
    if raw is None:
        return AgentConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of keys to values, found a {type(raw).__name__}", path=str(path))
    try:
        config = AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e) for e in exc.errors()[:5]), path=str(path)) from None
    base = path.parent
    updates: dict[str, Any] = {}
    for key in ("data_dir", "sysfs", "proc", "tls_ca", "tls_cert", "tls_key", "password_file"):
        if (value := getattr(config, key)) is not None:
            updates[key] = _relative_to(base, value)
    if config.trust is not None:
        updates["trust"] = [_relative_to(base, p) for p in config.trust]
    return config.model_copy(update=updates)


def _describe(error: Any) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(file)"
    if error["type"] == "extra_forbidden":
        known = list(AgentConfig.model_fields)
        close = difflib.get_close_matches(str(error["loc"][0]), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        return f"unknown key {key!r} ({hint})"
    return f"key {key!r}: {error['msg']}"
