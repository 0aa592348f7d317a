"""Installing on disk and reassembling transfers: atomic switch, leftovers, bad chunks, resume."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import make_package

from edgefleet.agent.errors import IntegrityError
from edgefleet.agent.install import ModelStore
from edgefleet.agent.keys import TrustStore
from edgefleet.agent.messages import PackageRef
from edgefleet.agent.package import file_sha256, verify_package
from edgefleet.agent.transfer import ChunkedDownload


def _install(store: ModelStore, package: Path, trust: TrustStore):  # type: ignore[no-untyped-def]
    manifest = verify_package(package, trust)
    staged = store.stage(package, manifest, file_sha256(package))
    store.activate(staged)
    return staged


def test_activate_switches_current_and_keeps_recent_versions(tmp_path: Path, signing_key: tuple[Path, Path]) -> None:
    trust = TrustStore.from_paths([signing_key[1]])
    store = ModelStore(tmp_path / "data", keep=2)
    assert store.current() is None
    installed = []
    for v in range(3):
        pkg = make_package(tmp_path / f"v{v}.efpkg", signing_key[0], version=str(v), scale=v + 1.0)
        installed.append(_install(store, pkg, trust))
        current = store.current()
        assert current is not None and current.manifest.version == str(v)
        assert current.model_path.read_bytes()  # complete, readable model
    assert not installed[0].directory.exists(), "older versions beyond `keep` are pruned"
    assert installed[1].directory.exists()


def test_clean_up_removes_what_a_crash_left_and_keeps_current(tmp_path: Path, signing_key: tuple[Path, Path]) -> None:
    trust = TrustStore.from_paths([signing_key[1]])
    store = ModelStore(tmp_path / "data")
    _install(store, make_package(tmp_path / "a.efpkg", signing_key[0]), trust)
    half = store.packages / ".staging-deadbeef-0000"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"half a model")
    (store.root / ".current-1234").symlink_to("packages/nowhere")
    store.clean_up()
    assert not half.exists() and not (store.root / ".current-1234").exists()
    current = store.current()
    assert current is not None and current.manifest.version == "1"


def _ref(data: bytes, chunk: int) -> PackageRef:
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return PackageRef(id="p@1:x", sha256=hashlib.sha256(data).hexdigest(), size=len(data), chunk_size=chunk,
                      chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks])


def test_chunks_reassemble_in_any_order_and_resume_after_restart(tmp_path: Path) -> None:
    data = bytes(range(256)) * 41  # 10,496 bytes: the last chunk is short
    ref = _ref(data, 1000)
    dl = ChunkedDownload(tmp_path, ref)
    for i in (10, 3, 0, 7):
        assert dl.accept(i, data[i * 1000 : (i + 1) * 1000])
    assert not dl.accept(3, data[3000:4000]), "a duplicate chunk is not written twice"
    # A new agent process picks up where the old one stopped.
    resumed = ChunkedDownload(tmp_path, ref)
    assert resumed.have == {0, 3, 7, 10}
    for i in set(range(ref.chunk_count())) - resumed.have:
        resumed.accept(i, data[i * 1000 : (i + 1) * 1000])
    assert resumed.complete
    assert resumed.finish().read_bytes() == data


def test_a_chunk_arriving_after_the_download_was_given_up_leaves_nothing_behind(tmp_path: Path) -> None:
    """The disk-full fault: the run thread discards the download while the network thread still
    delivers chunks. A late chunk must not write a .chunks index listing chunks the next attempt's
    fresh .part does not have (that attempt would fail its whole-file hash)."""
    data = bytes(range(256)) * 12
    ref = _ref(data, 1000)
    dl = ChunkedDownload(tmp_path, ref)
    assert dl.accept(0, data[:1000])
    dl.discard()
    assert not dl.accept(1, data[1000:2000])
    assert list(tmp_path.iterdir()) == []
    # An index whose .part is gone (a crash between discard's two unlinks) is not believed either.
    (tmp_path / f"{ref.sha256}.chunks").write_text("[0, 1]")
    again = ChunkedDownload(tmp_path, ref)
    assert again.have == set()
    for i in range(ref.chunk_count()):
        assert again.accept(i, data[i * 1000 : (i + 1) * 1000])
    assert again.finish().read_bytes() == data


def test_a_corrupt_chunk_is_refused_and_not_written(tmp_path: Path) -> None:
    data = b"x" * 3000
    dl = ChunkedDownload(tmp_path, _ref(data, 1000))
    with pytest.raises(IntegrityError, match="chunk 1 .* wrong sha256"):
        dl.accept(1, b"y" * 1000)
    assert dl.have == set()


def test_a_deployment_whose_chunk_list_does_not_add_up_is_refused(tmp_path: Path) -> None:
    ref = _ref(b"z" * 3000, 1000).model_copy(update={"size": 5000})
    with pytest.raises(IntegrityError, match="lists 3 chunk hashes"):
        ChunkedDownload(tmp_path, ref)
