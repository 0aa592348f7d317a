"""The package format: what verifies, and every way a package is refused."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from edgefleet.agent import keys
from edgefleet.agent.errors import IntegrityError, PackageError, SignatureError
from edgefleet.agent.keys import TrustStore
from edgefleet.agent.package import (
    MANIFEST,
    load_test_vectors,
    read_manifest,
    verify_package,
)


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename, zin.read(info.filename)))
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def test_a_signed_package_verifies_and_carries_its_test_vectors(package: Path, trust: TrustStore) -> None:
    manifest = verify_package(package, trust)
    assert manifest.package_id == "tiny@1:raspberry-pi-4"
    assert set(manifest.files) == {"model.onnx", "test_vectors.npz"}
    with zipfile.ZipFile(package) as z:
        inputs, outputs = load_test_vectors(z.read("test_vectors.npz"))
    assert len(inputs) == len(outputs) == 3
    assert inputs[2]["x"].shape == (1, 4)


def test_a_package_signed_by_an_untrusted_key_is_refused(package: Path, tmp_path: Path) -> None:
    _, other_pub = keys.generate(tmp_path / "other.key")
    with pytest.raises(SignatureError, match="does not trust"):
        verify_package(package, TrustStore.from_paths([other_pub]))


def test_a_changed_manifest_breaks_the_signature(package: Path, trust: TrustStore, tmp_path: Path) -> None:
    with zipfile.ZipFile(package) as z:
        manifest = z.read(MANIFEST).replace(b'"version": "1"', b'"version": "9"')
    bad = _rewrite(package, tmp_path / "bad.efpkg", {MANIFEST: manifest})
    with pytest.raises(SignatureError, match="altered"):
        verify_package(bad, trust)


def test_a_swapped_model_fails_its_hash(package: Path, trust: TrustStore, tmp_path: Path) -> None:
    with zipfile.ZipFile(package) as z:
        model = bytearray(z.read("model.onnx"))
    model[-1] ^= 0xFF
    bad = _rewrite(package, tmp_path / "bad.efpkg", {"model.onnx": bytes(model)})
    with pytest.raises(IntegrityError, match="model.onnx: sha256"):
        verify_package(bad, trust)


def test_an_extra_member_is_refused(package: Path, trust: TrustStore, tmp_path: Path) -> None:
    bad = _rewrite(package, tmp_path / "bad.efpkg", {}, add={"evil.sh": b"x"})
    with pytest.raises(PackageError, match="not listed in the manifest"):
        verify_package(bad, trust)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_garbage_is_not_a_package(tmp_path: Path, trust: TrustStore, content: bytes) -> None:
    path = tmp_path / "junk.efpkg"
    path.write_bytes(content)
    with pytest.raises(PackageError, match="not an edgefleet package"):
        verify_package(path, trust)


def test_a_missing_package_says_so(tmp_path: Path, trust: TrustStore) -> None:
    with pytest.raises(PackageError, match="no such file"):
        read_manifest(tmp_path / "nope.efpkg")


def test_an_agent_without_trusted_keys_is_told_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trusted-keys does not exist; pass --trust"):
        TrustStore.from_paths([tmp_path / "trusted-keys"])
