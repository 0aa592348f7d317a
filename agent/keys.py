"""Ed25519 signing keys: the compiler signs packages, the agent trusts a set of public keys.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public) so that openssl and every
other tool can read them. A key id is the first 16 hex digits of the SHA-256 of the raw public
key; a manifest names the id of the key that signed it, so an agent with several trusted keys
knows which to use.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.agent.errors import SignatureError


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate(private_path: Path) -> tuple[Path, Path]:
    """Write a new private key to ``private_path`` (mode 0600) and its public key beside it (``.pub``)."""
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
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable unencrypted PEM private key ({exc}); make one with `edgefleet keys generate`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 key; make one with `edgefleet keys generate`")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


class TrustStore:
    """The public keys an agent accepts packages from, by key id."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        self._keys = {key_id(k): k for k in keys}

    @classmethod
    def from_paths(cls, paths: list[Path]) -> TrustStore:
        """Load ``.pub`` files; a directory contributes every ``*.pub`` inside it."""
        files: list[Path] = []
        for p in map(Path, paths):
            if not p.exists():
                raise ValueError(f"no trusted signing keys: {p} does not exist; pass --trust SIGNING.pub, or copy "
                                 "the fleet's signing.pub (from `edgefleet keys generate`) into that directory")
            files.extend(sorted(p.glob("*.pub")) if p.is_dir() else [p])
        return cls([load_public(f) for f in files])

    def __len__(self) -> int:
        return len(self._keys)

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, signer: str, signature: bytes, data: bytes) -> None:
        key = self._keys.get(signer)
        if key is None:
            raise SignatureError(
                f"signed by key {signer}, which this agent does not trust (trusted: {', '.join(self.ids()) or 'none'}); "
                "add the signer's .pub with --trust"
            )
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(f"the signature by key {signer} does not match the manifest: the package was altered") from None
