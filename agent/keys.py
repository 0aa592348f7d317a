"""Ed25519 signing keys: the compiler signs packages, the agent trusts a set of public keys.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public) so that openssl and every
other tool can read them. A key id is the first 16 hex digits of the SHA-256 of the raw public
key; a manifest names the id of the key that signed it, so an agent with several trusted keys
knows which to use.

Trust changes over time (``docs/security.md``, "Package trust"):

* **several keys**: every ``*.pub`` in a trusted directory is trusted, so a new key is added
  beside the old one before the compiler starts signing with it (rotation);
* **validity windows**: a ``.pub`` may start with ``not-before:`` / ``not-after:`` lines (ISO
  8601 dates, before the PEM block, where openssl ignores them); outside its window a key
  verifies nothing;
* **revocation**: a key id listed in a ``revoked`` file of a trusted directory, or in a signed
  ``KeyRevocation`` the agent received (kept in ``DATA_DIR/revoked-keys``), verifies nothing,
  ever again, whatever it signed and whenever; revocations only add, nothing un-revokes a key.

Signed statements (a rollback permission, a revocation) are JSON objects signed over their
canonical form: keys sorted, no spaces, UTF-8 (``canonical``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgefleet.agent.errors import SignatureError

log = logging.getLogger(__name__)

REVOKED_FILE = "revoked"  # in a trusted directory: key ids that directory's keys must not verify
KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_WINDOW_LINE = re.compile(r"^(not-before|not-after):\s*(\S+)\s*$")
_PEM_BEGIN = "-----BEGIN"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(private_path: Path, *, not_before: float | None = None, not_after: float | None = None) -> tuple[Path, Path]:
    """Write a new private key to ``private_path`` (mode 0600) and its public key beside it (``.pub``).

    ``not_before`` / ``not_after`` (Unix times) are written into the ``.pub`` as its validity window.
    """
    private_path = Path(private_path)
    public_path = private_path.with_suffix(".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise FileExistsError(f"{p} already exists: refusing to overwrite a key; choose another path")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    header = "".join(f"{name}: {_iso(t)}\n" for name, t in (("not-before", not_before), ("not-after", not_after))
                     if t is not None)
    public_path.write_bytes(header.encode() + key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable unencrypted PEM private key ({exc}); make one with `edgefleet keys generate`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 key; make one with `edgefleet keys generate`")  # noqa: TRY004 (callers catch ValueError for any bad key file)
    return key


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A public key the agent trusts, and when: ``not_before``/``not_after`` are Unix times or None (open)."""

    public: Ed25519PublicKey
    not_before: float | None = None
    not_after: float | None = None
    source: str = ""

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def valid_at(self, t: float) -> bool:
        return (self.not_before is None or t >= self.not_before) and (self.not_after is None or t <= self.not_after)

    def window(self) -> str:
        if self.not_before is None and self.not_after is None:
            return "always"
        return f"{_iso(self.not_before) if self.not_before else '…'} to {_iso(self.not_after) if self.not_after else '…'}"


def load_public(path: Path) -> Ed25519PublicKey:
    return load_trusted(path).public


def load_trusted(path: Path) -> TrustedKey:
    """A ``.pub`` file with its optional ``not-before:`` / ``not-after:`` lines before the PEM block."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable PEM public key ({exc})") from None
    head, begin, pem = text.partition(_PEM_BEGIN)
    window: dict[str, float] = {}
    for number, line in enumerate(head.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _WINDOW_LINE.match(line.strip())
        if match is None:
            raise ValueError(f"{path}, line {number}: expected 'not-before: DATE' or 'not-after: DATE' before the "
                             f"PEM block, found {line.strip()[:60]!r}")
        window[match[1]] = _parse_time(match[2], f"{path}, line {number}")
    try:
        key = serialization.load_pem_public_key((begin + pem).encode())
    except ValueError as exc:
        raise ValueError(f"{path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")  # noqa: TRY004 (callers catch ValueError for any bad key file)
    return TrustedKey(key, window.get("not-before"), window.get("not-after"), str(path))


def read_key_ids(path: Path) -> set[str]:
    """Key ids listed in a revocation file: one per line, ``#`` starts a comment; a missing file lists none."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return set()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the revoked key list ({exc})") from None
    ids: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        if not KEY_ID.match(word):
            raise ValueError(f"{path}, line {number}: {word[:40]!r} is not a key id (16 hex digits, "
                             "as `edgefleet keys list` shows)")
        ids.add(word)
    return ids


def canonical(statement: dict[str, Any]) -> bytes:
    """The exact bytes a statement is signed over: sorted keys, no whitespace, UTF-8."""
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_statement(key: Ed25519PrivateKey, statement: dict[str, Any]) -> tuple[str, str]:
    """``(signer key id, base64 signature)`` of ``statement``."""
    return key_id(key.public_key()), base64.b64encode(key.sign(canonical(statement))).decode()


class TrustStore:
    """The public keys an agent accepts signatures from, by key id, minus the revoked ones.

    Safe to use from two threads: the network thread adds revocations while the run thread verifies.
    """

    def __init__(self, keys: Iterable[Ed25519PublicKey | TrustedKey], revoked: Iterable[str] = ()) -> None:
        entries = [k if isinstance(k, TrustedKey) else TrustedKey(k) for k in keys]
        self._keys = {k.key_id: k for k in entries}
        self._revoked: set[str] = set(revoked)
        self._lock = threading.Lock()
        self._persist: Path | None = None

    @classmethod
    def from_paths(cls, paths: list[Path]) -> TrustStore:
        """Load ``.pub`` files; a directory contributes every ``*.pub`` inside it and its ``revoked`` list."""
        files: list[Path] = []
        revoked: set[str] = set()
        for p in map(Path, paths):
            if not p.exists():
                raise ValueError(f"no trusted signing keys: {p} does not exist; pass --trust SIGNING.pub, or copy "
                                 "the fleet's signing.pub (from `edgefleet keys generate`) into that directory")
            if p.is_dir():
                files.extend(sorted(p.glob("*.pub")))
                revoked |= read_key_ids(p / REVOKED_FILE)
            else:
                files.append(p)
        return cls([load_trusted(f) for f in files], revoked)

    def __len__(self) -> int:
        """Keys configured, revoked or not (the agent needs at least one to start)."""
        return len(self._keys)

    def ids(self) -> list[str]:
        """The ids of the keys that can still verify (not revoked; windows not considered)."""
        with self._lock:
            return sorted(set(self._keys) - self._revoked)

    def entries(self) -> list[TrustedKey]:
        """Every configured key, revoked or not, by id."""
        return [self._keys[k] for k in sorted(self._keys)]

    def is_revoked(self, key: str) -> bool:
        with self._lock:
            return key in self._revoked

    def revoked(self) -> set[str]:
        with self._lock:
            return set(self._revoked)

    def keep_revocations(self, path: Path) -> None:
        """Load the revocations saved at ``path`` and save every later ``revoke`` there (atomically)."""
        ids = read_key_ids(path)
        with self._lock:
            self._revoked |= ids
            self._persist = Path(path)

    def revoke(self, key: str) -> bool:
        """Revoke ``key`` for good; returns False if it already was."""
        if not KEY_ID.match(key):
            raise ValueError(f"{key!r} is not a key id (16 hex digits)")
        with self._lock:
            if key in self._revoked:
                return False
            self._revoked.add(key)
            if self._persist is not None:
                # Written before anyone is told: a revocation that a restart forgets would be undone.
                tmp = self._persist.with_name(self._persist.name + ".tmp")
                tmp.write_text("".join(f"{k}\n" for k in sorted(self._revoked)))
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, self._persist)
        if not self.ids():
            log.error("key %s revoked: no trusted signing key is left, so every package will be refused until "
                      "a new .pub is added to the trusted keys and the agent restarted", key)
        return True

    def verify(self, signer: str, signature: bytes, data: bytes, *, now: float | None = None) -> None:
        """Raise SignatureError unless ``signer`` is trusted, not revoked, valid now, and signed ``data``."""
        now = time.time() if now is None else now
        key = self._keys.get(signer)
        if key is None:
            raise SignatureError(
                f"signed by key {signer}, which this agent does not trust (trusted: {', '.join(self.ids()) or 'none'}); "
                "add the signer's .pub with --trust"
            )
        if self.is_revoked(signer):
            raise SignatureError(f"signed by key {signer}, which has been revoked; sign with a current key "
                                 f"(trusted: {', '.join(self.ids()) or 'none'})")
        if not key.valid_at(now):
            raise SignatureError(f"signed by key {signer}, which is valid {key.window()} and not now "
                                 f"({_iso(now)}); sign with a current key, or check the device's clock")
        try:
            key.public.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(f"the signature by key {signer} does not match the manifest: the package was altered") from None

    def verify_statement(self, signer: str, signature: str, statement: dict[str, Any], *, what: str,
                         now: float | None = None) -> None:
        """Check a base64 ``signature`` of ``canonical(statement)``; ``what`` names the statement in errors."""
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError(f"the signature of the {what} is not base64") from None
        try:
            self.verify(signer, raw, canonical(statement), now=now)
        except SignatureError as exc:
            raise SignatureError(f"{what}: {str(exc).replace('the manifest: the package', 'it: it')}") from None


def _iso(t: float | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str, where: str) -> float:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an ISO 8601 date or time (2027-01-31 or 2027-01-31T12:00:00Z)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # a bare date means UTC: devices in other zones agree on the instant
    return value.timestamp()
