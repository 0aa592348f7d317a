"""Where the compiler's signing key lives by default, and making it on first use.

The default is ``$EDGEFLEET_HOME/keys/signing.key`` (``EDGEFLEET_HOME`` defaults to
``~/.edgefleet``). The environment is passed in rather than read here, so only the CLI entry point
looks at ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent import keys


@dataclass(frozen=True)
class SigningKey:
    path: Path
    public_path: Path
    key_id: str
    created: bool


def default_key_path(env: Mapping[str, str]) -> Path:
    home = Path(env["EDGEFLEET_HOME"]).expanduser() if env.get("EDGEFLEET_HOME") else Path("~/.edgefleet").expanduser()
    return home / "keys" / "signing.key"


def ensure_key(path: Path, *, create: bool) -> SigningKey:
    """The key at ``path``; if it is missing and ``create`` is set, a new one (with its ``.pub``)."""
    created = False
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"{path}: no such signing key; make one with `edgefleet keys generate {path}`")
        keys.generate(path)
        created = True
    private = keys.load_private(path)
    return SigningKey(path=path, public_path=path.with_suffix(".pub"), key_id=keys.key_id(private.public_key()), created=created)
