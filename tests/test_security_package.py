"""Package trust: hostile archives, several keys with windows and revocation, anti-rollback.

Library-level tests craft real ZIP files byte by byte; the end-to-end tests push them (and
downgrades, forged rollbacks and revocations) to real agent processes over the real Mosquitto
and check the device refuses, says why, and keeps serving the model it had.
"""

from __future__ import annotations

import hashlib
import json
import stat
import struct
import time
import uuid
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import AgentProcess, Watcher, clear_retained, forget_device, make_package

from edgefleet.agent import keys, topics
from edgefleet.agent.errors import IntegrityError, PackageError, SignatureError
from edgefleet.agent.install import ModelStore
from edgefleet.agent.keys import TrustStore
from edgefleet.agent.messages import Deployment, PackageRef
from edgefleet.agent.package import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    SIGNATURE,
    ArchiveLimits,
    compare_versions,
    read_manifest,
    verify_package,
)
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.link import BrokerLink
from edgefleet.deploy.push import (
    chunk_messages,
    clear_deployment,
    describe_package,
    push_package,
    sign_rollback,
)

# --- crafting archives -------------------------------------------------------------------


def _members(package: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(package) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]], *,
         compression: int = zipfile.ZIP_STORED) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we write on purpose
        with zipfile.ZipFile(path, "w", compression=compression) as z:
            for name, data in members:
                z.writestr(name, data)
    return path


def _hostile(package: Path, path: Path, extra: list[tuple[str | zipfile.ZipInfo, bytes]], **kw: int) -> Path:
    """The signed package's members plus ``extra``."""
    return _zip(path, [*_members(package).items(), *extra], **kw)


def _symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.create_system = 3  # unix
    return info


def _set_declared_size(data: bytes, name: str, size: int) -> bytes:
    """Make the central directory (what zipfile trusts) claim ``size`` uncompressed bytes for ``name``."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", out, at + 28)[0]
        if out[at + 46:at + 46 + name_len] == name.encode():
            struct.pack_into("<I", out, at + 24, size)
            return bytes(out)
        at = out.find(b"PK\x01\x02", at + 46)
    raise AssertionError(f"{name} not in the central directory")


def _set_declared_entries(data: bytes, entries: int) -> bytes:
    out = bytearray(data)
    at = out.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", out, at + 8, entries, entries)
    return bytes(out)


def _hostile_cases(package: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (crafted archive, what the refusal says). Each is refused before its signature is looked at."""
    members = _members(package)
    bomb = b"\0" * (20 * 1024**2)
    deep = b'{"a":' * 200 + b"1" + b"}" * 200
    cases = {
        "dot-dot": (_hostile(package, tmp / "dotdot.efpkg", [("../../etc/cron.d/evil", b"x")]), "path traversal"),
        "absolute": (_hostile(package, tmp / "abs.efpkg", [("/etc/passwd", b"x")]), "path traversal"),
        "backslash": (_hostile(package, tmp / "bs.efpkg", [("..\\evil.bat", b"x")]), "path traversal"),
        "directory": (_hostile(package, tmp / "dir.efpkg", [("sub/model.onnx", b"x")]), "in a directory"),
        "symlink": (_hostile(package, tmp / "link.efpkg", [(_symlink("evil", "/etc/shadow"), b"/etc/shadow")]),
                    "symbolic link"),
        "duplicate": (_hostile(package, tmp / "dup.efpkg", [("model.onnx", b"other model")]), "appears twice"),
        "duplicate-case": (_hostile(package, tmp / "dupcase.efpkg", [("MODEL.onnx", b"x")]), "appears twice"),
        "too-many": (_hostile(package, tmp / "many.efpkg", [(f"f{i}", b"") for i in range(100)]),
                     "more than the 64"),
        "bomb": (_hostile(package, tmp / "bomb.efpkg", [("padding.bin", bomb)], compression=zipfile.ZIP_DEFLATED),
                 "compression bomb"),
        "big-manifest": (_zip(tmp / "bigman.efpkg", [(MANIFEST, b" " * (MAX_MANIFEST_BYTES + 1)),
                                                     (SIGNATURE, members[SIGNATURE])]), "more than the"),
        "deep-manifest": (_zip(tmp / "deep.efpkg", [(MANIFEST, deep), (SIGNATURE, members[SIGNATURE])]),
                          "nests 200 levels"),
        "duplicate-key": (_zip(tmp / "dupkey.efpkg", [(MANIFEST, members[MANIFEST].replace(
            b'"name": "tiny"', b'"name": "tiny", "name": "evil"')), (SIGNATURE, members[SIGNATURE])]),
            "duplicate key"),
    }
    declared = tmp / "declared.efpkg"
    declared.write_bytes(_set_declared_entries(package.read_bytes(), 60000))
    cases["declared-entries"] = (declared, "declares 60000 entries")
    empty = tmp / "empty.efpkg"  # a name zipfile cuts to nothing at its NUL (zipfile cannot write one)
    empty.write_bytes(_hostile(package, tmp / "x.efpkg", [("Xevil", b"x")]).read_bytes().replace(b"Xevil", b"\0evil"))
    cases["empty-name"] = (empty, "empty name")
    return cases


def test_every_hostile_archive_is_refused_with_a_specific_error(package: Path, trust: TrustStore,
                                                                tmp_path: Path) -> None:
    for name, (path, says) in _hostile_cases(package, tmp_path).items():
        with pytest.raises(PackageError, match=says) as refused:
            verify_package(path, trust)
        assert str(path) in str(refused.value), name
        with pytest.raises(PackageError, match=says):  # tools reading the manifest refuse it the same way
            read_manifest(path)


def test_a_symlink_or_encrypted_member_is_refused(package: Path, trust: TrustStore, tmp_path: Path) -> None:
    data = bytearray(package.read_bytes())
    at = data.find(b"PK\x01\x02")  # first central directory entry: set its "encrypted" flag
    struct.pack_into("<H", data, at + 8, struct.unpack_from("<H", data, at + 8)[0] | 1)
    encrypted = tmp_path / "enc.efpkg"
    encrypted.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="encrypted"):
        verify_package(encrypted, trust)


def test_the_total_size_limit_is_checked_against_the_headers(package: Path, trust: TrustStore) -> None:
    with pytest.raises(PackageError, match="unpacks to more than 1000 bytes"):
        verify_package(package, trust, limits=ArchiveLimits(max_total_bytes=1000))
    assert verify_package(package, trust).name == "tiny"


def test_a_header_that_lies_about_its_size_is_caught_while_streaming(package: Path, trust: TrustStore,
                                                                   tmp_path: Path) -> None:
    """The central directory says the model is its real size, the data inflates to 50 MB of zeros.

    The ratio check sees nothing wrong (small declared size), so only the streaming bound stops it:
    zipfile stops at the declared size and the CRC no longer matches.
    """
    members = _members(package)
    declared = len(members["model.onnx"])
    liar = tmp_path / "liar.efpkg"
    with zipfile.ZipFile(liar, "w") as z:
        for name, data in members.items():
            if name == "model.onnx":
                z.writestr(name, b"\0" * (50 * 1024**2), compress_type=zipfile.ZIP_DEFLATED)
            else:
                z.writestr(name, data)
    liar.write_bytes(_set_declared_size(liar.read_bytes(), "model.onnx", declared))
    with pytest.raises(IntegrityError, match="model.onnx is corrupt"):
        verify_package(liar, trust)


def test_manifest_limits_leave_real_manifests_alone(package: Path) -> None:
    from edgefleet.agent.package import MAX_MANIFEST_DEPTH, manifest_depth

    depth = manifest_depth(_members(package)[MANIFEST])
    assert 2 <= depth < MAX_MANIFEST_DEPTH
    assert manifest_depth(b'{"a": "[[[[{{{{", "b": [[1]]}') == 3  # brackets inside strings do not count


# --- versions and the high-water mark ------------------------------------------------------


@pytest.mark.parametrize(("older", "newer"), [
    ("1", "2"), ("2", "10"), ("1.9", "1.10"), ("1", "1.0"), ("1.0", "1.0.1"), ("2", "2b"), ("2a", "2b"),
    ("1.a", "1.1"), ("2026.1.31", "2026.11.3-nightly"), ("0.9.rc1", "1.0"),
])
def test_versions_order_naturally(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1
    assert compare_versions(newer, newer) == 0


def test_the_high_water_mark_survives_deleting_old_versions(tmp_path: Path, signing_key: tuple[Path, Path]) -> None:
    store = ModelStore(tmp_path / "data", keep=1)
    trust = TrustStore.from_paths([signing_key[1]])
    for v in ("1", "3", "2"):
        pkg = make_package(tmp_path / f"v{v}.efpkg", signing_key[0], version=v, scale=float(v))
        manifest = verify_package(pkg, trust)
        store.record_version(manifest)
        store.activate(store.stage(pkg, manifest, hashlib.sha256(pkg.read_bytes()).hexdigest()))
    assert store.version_floor("tiny") == "3", "recording 2 after 3 does not lower the mark"
    for d in store.packages.iterdir():  # an operator clearing disk space
        if d.resolve() != store.current_link.resolve():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    assert ModelStore(tmp_path / "data").version_floor("tiny") == "3"
    store.record_version(verify_package(tmp_path / "v1.efpkg", trust), rollback=True)
    assert store.version_floor("tiny") == "1", "a signed rollback sets the mark to where it went back to"
    store.versions_path.write_text("{not json")
    with pytest.raises(PackageError, match="anti-rollback record .* is unreadable"):
        store.version_floor("tiny")


# --- several keys, windows, revocation -----------------------------------------------------


def test_several_keys_windows_and_a_revoked_list(tmp_path: Path) -> None:
    trusted = tmp_path / "trusted-keys"
    now = time.time()
    _, old_pub = keys.generate(tmp_path / "old.key")
    _, new_pub = keys.generate(tmp_path / "new.key", not_before=now - 60, not_after=now + 3600)
    _, expired_pub = keys.generate(tmp_path / "expired.key", not_after=now - 60)
    _, future_pub = keys.generate(tmp_path / "future.key", not_before=now + 3600)
    trusted.mkdir()
    for pub in (old_pub, new_pub):  # only public keys go to a device
        (trusted / pub.name).write_bytes(pub.read_bytes())
    signed = {name: make_package(tmp_path / f"{name}.efpkg", tmp_path / f"{name}.key", version="1")
              for name in ("old", "new", "expired", "future")}

    trust = TrustStore.from_paths([trusted])
    assert len(trust) == 2
    assert verify_package(signed["old"], trust) and verify_package(signed["new"], trust)
    assert "not-after: " in (trusted / "new.pub").read_text()

    store = TrustStore.from_paths([trusted, expired_pub, future_pub])
    with pytest.raises(SignatureError, match="valid … to .* and not now"):
        verify_package(signed["expired"], store)
    with pytest.raises(SignatureError, match="and not now"):
        verify_package(signed["future"], store)

    old_id = keys.key_id(keys.load_public(old_pub))
    (trusted / "revoked").write_text(f"# rotated out in favour of new.pub\n{old_id}\n")
    trust = TrustStore.from_paths([trusted])
    with pytest.raises(SignatureError, match=f"key {old_id}, which has been revoked"):
        verify_package(signed["old"], trust)
    assert verify_package(signed["new"], trust)

    (trusted / "revoked").write_text("not-a-key-id\n")
    with pytest.raises(ValueError, match="line 1: 'not-a-key-id' is not a key id"):
        TrustStore.from_paths([trusted])
    (trusted / "revoked").unlink()
    (trusted / "new.pub").write_text("valid-until: tomorrow\n" + (trusted / "new.pub").read_text())
    with pytest.raises(ValueError, match="line 1: expected 'not-before: DATE' or 'not-after: DATE'"):
        TrustStore.from_paths([trusted])


def test_revocations_persist_and_only_ever_add(tmp_path: Path, signing_key: tuple[Path, Path]) -> None:
    saved = tmp_path / "revoked-keys"
    trust = TrustStore.from_paths([signing_key[1]])
    trust.keep_revocations(saved)
    only = trust.ids()[0]
    assert trust.revoke(only) and not trust.revoke(only)
    assert trust.ids() == [], "revoking the last key leaves none: every package is refused"
    again = TrustStore.from_paths([signing_key[1]])
    again.keep_revocations(saved)
    assert again.is_revoked(only)
    with pytest.raises(SignatureError, match="revoked"):
        verify_package(make_package(tmp_path / "p.efpkg", signing_key[0]), again)


def test_a_statement_signature_binds_every_field(signing_key: tuple[Path, Path]) -> None:
    key = keys.load_private(signing_key[0])
    trust = TrustStore.from_paths([signing_key[1]])
    statement = {"kind": "edgefleet.rollback/1", "device": "pi-1", "version": "1"}
    signer, signature = keys.sign_statement(key, statement)
    trust.verify_statement(signer, signature, statement, what="test")
    with pytest.raises(SignatureError, match="test: the signature by key .* does not match it"):
        trust.verify_statement(signer, signature, {**statement, "device": "pi-2"}, what="test")
    with pytest.raises(SignatureError, match="not base64"):
        trust.verify_statement(signer, "%%%", statement, what="test")


# --- end to end: a real agent --------------------------------------------------------------


def _publish_package(broker: str, device_id: str, path: Path, package_id: str, *,
                     rollback: Deployment | None = None) -> Deployment:
    """Publish any file as a package and a deployment of it, as a hostile fleet (or broker) could."""
    data = path.read_bytes()
    chunk = 64 * 1024
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    ref = PackageRef(id=package_id, sha256=hashlib.sha256(data).hexdigest(), size=len(data), chunk_size=chunk,
                     chunk_sha256=[hashlib.sha256(p).hexdigest() for p in pieces])
    deployment = rollback or Deployment(deployment_id=uuid.uuid4().hex[:12], package=ref, profile="raspberry-pi-4")
    with BrokerLink(BrokerURL.parse(broker), timeout=30) as link:
        link.publish(chunk_messages(path, deployment.package), total=deployment.package.chunk_count())
        link.publish([(topics.device_deploy(device_id), deployment.to_bytes())], total=1)
    _PUBLISHED.append(deployment.package)
    return deployment


_PUBLISHED: list[PackageRef] = []


def _outcome(watcher: Watcher, deployment_id: str) -> dict:  # type: ignore[type-arg]
    _, event = watcher.wait_for(lambda t, m: t.endswith("/events") and m.get("deployment_id") == deployment_id
                                and m["phase"] in ("done", "failed"), timeout=60)
    return event


def _serving(watcher: Watcher, expected: str, timeout: float = 10) -> str | None:
    """The version in the device's latest retained state, once it is ``expected`` or ``timeout`` passed.

    The state is published just after a deployment's last event, so it may arrive a moment later.
    """
    deadline = time.monotonic() + timeout
    while True:
        states = [json.loads(p) for t, p in list(watcher.messages) if t.endswith("/state")]
        model = states[-1].get("model") if states else None
        version = model["version"] if model else None
        if version == expected or time.monotonic() > deadline:
            return version
        time.sleep(0.1)


@pytest.fixture(scope="module")
def agent(broker_url: str, signing_key: tuple[Path, Path],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, AgentProcess, Watcher, Path]]:
    device_id = f"test-sec-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("sec")
    clear_deployment(BrokerURL.parse(broker_url), device=device_id)
    watcher = Watcher(broker_url, f"edgefleet/v1/devices/{device_id}/#")
    process = AgentProcess(broker_url, device_id, workdir / "data", signing_key[1]).start()
    watcher.wait_for(lambda t, m: t.endswith("/state") and m["status"] == "online", timeout=30)
    yield device_id, process, watcher, workdir
    process.stop()
    watcher.close()
    forget_device(broker_url, device_id, _PUBLISHED)


def _push(broker_url: str, device_id: str, package: Path, **kw: object) -> Deployment:
    deployment = push_package(package, broker=BrokerURL.parse(broker_url), device=device_id, **kw)  # type: ignore[arg-type]
    _PUBLISHED.append(deployment.package)
    return deployment


def test_hostile_archives_are_refused_by_a_real_agent_which_keeps_its_model(agent, broker_url: str,  # type: ignore[no-untyped-def]
                                                                            signing_key, tmp_path: Path) -> None:
    device_id, process, watcher, _ = agent
    v1 = make_package(tmp_path / "v1.efpkg", signing_key[0], version="1")
    assert _outcome(watcher, _push(broker_url, device_id, v1).deployment_id)["phase"] == "done"
    cases = _hostile_cases(v1, tmp_path)
    for name in ("dot-dot", "symlink", "bomb", "deep-manifest", "declared-entries"):
        path, says = cases[name]
        event = _outcome(watcher, _publish_package(broker_url, device_id, path, "tiny@1:raspberry-pi-4").deployment_id)
        assert event["phase"] == "failed" and says in event["error"], (name, event)
        assert _serving(watcher, "1") == "1", name
    assert process.alive()
    assert not list((process.log_path.parent / "data" / "packages").glob(".staging-*"))


def test_an_older_version_needs_a_signed_rollback(agent, broker_url: str, signing_key, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    device_id, process, watcher, _ = agent
    v1 = make_package(tmp_path / "v1.efpkg", signing_key[0], version="1")
    v2 = make_package(tmp_path / "v2.efpkg", signing_key[0], version="2", scale=2.0)
    assert _outcome(watcher, _push(broker_url, device_id, v2).deployment_id)["phase"] == "done"

    event = _outcome(watcher, _push(broker_url, device_id, v1).deployment_id)
    assert event["phase"] == "failed" and "older than version 2 of tiny installed before" in event["error"]
    assert "anti-rollback" in event["error"] and _serving(watcher, "2") == "2"

    # A rollback permission signed by a key the device does not trust (a broker-side attacker's).
    rogue, _ = keys.generate(tmp_path / "rogue.key")
    manifest, ref = describe_package(v1)
    forged = sign_rollback(Deployment(deployment_id=uuid.uuid4().hex[:12], package=ref, profile="raspberry-pi-4"),
                           manifest, keys.load_private(rogue), device=device_id)
    event = _outcome(watcher, _publish_package(broker_url, device_id, v1, manifest.package_id, rollback=forged)
                     .deployment_id)
    assert event["phase"] == "failed" and "which this agent does not trust" in event["error"]

    # A genuine permission, for another device, replayed here.
    other = sign_rollback(Deployment(deployment_id=uuid.uuid4().hex[:12], package=ref, profile="raspberry-pi-4"),
                          manifest, keys.load_private(signing_key[0]), device="someone-else")
    event = _outcome(watcher, _publish_package(broker_url, device_id, v1, manifest.package_id, rollback=other)
                     .deployment_id)
    assert event["phase"] == "failed" and "does not match it (device)" in event["error"]

    # A genuine permission lifted onto another deployment (one the device has not seen yet).
    genuine = sign_rollback(Deployment(deployment_id=uuid.uuid4().hex[:12], package=ref, profile="raspberry-pi-4"),
                            manifest, keys.load_private(signing_key[0]), device=device_id)
    moved = genuine.model_copy(update={"deployment_id": uuid.uuid4().hex[:12]})
    event = _outcome(watcher, _publish_package(broker_url, device_id, v1, manifest.package_id, rollback=moved)
                     .deployment_id)
    assert event["phase"] == "failed" and "does not match it (deployment_id)" in event["error"]
    assert _serving(watcher, "2") == "2"

    from edgefleet.deploy.cli import main

    result = CliRunner().invoke(main, ["push", str(v1), "--device", device_id, "--broker", broker_url, "--rollback",
                                       "--key", str(signing_key[0]), "--wait", "--timeout", "60", "--json"])
    assert result.exit_code == 0, result.output
    pushed = json.loads(result.stdout)
    assert pushed["deployment"]["rollback"]["version"] == "1" and pushed["devices"][0]["ok"]
    _PUBLISHED.append(PackageRef.model_validate(pushed["deployment"]["package"]))
    assert _serving(watcher, "1") == "1"
    assert "rolling tiny back from version 2 to 1" in process.log()


def test_a_key_revoked_over_mqtt_signs_nothing_more(broker_url: str, tmp_path: Path) -> None:
    """Rotation: trust old and new, revoke old (signed by new); old's packages and revocations are refused."""
    from edgefleet.deploy.cli import main

    trusted = tmp_path / "trusted-keys"
    old_key, old_pub = keys.generate(tmp_path / "old.key")
    new_key, new_pub = keys.generate(tmp_path / "new.key")
    trusted.mkdir()
    for pub in (old_pub, new_pub):
        (trusted / pub.name).write_bytes(pub.read_bytes())
    old_id, new_id = (keys.key_id(keys.load_public(p)) for p in (old_pub, new_pub))
    device_id = f"test-rev-{uuid.uuid4().hex[:8]}"
    url = BrokerURL.parse(broker_url)
    watcher = Watcher(broker_url, f"edgefleet/v1/devices/{device_id}/#")
    process = AgentProcess(broker_url, device_id, tmp_path / "data", trusted).start()
    refs: list[PackageRef] = []
    try:
        watcher.wait_for(lambda t, m: t.endswith("/state") and m["status"] == "online", timeout=30)
        result = CliRunner().invoke(main, ["keys", "revoke", old_id, "--key", str(new_key), "--reason", "rotated",
                                           "--broker", broker_url])
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 15
        while f"signing key {old_id} revoked by key {new_id} (rotated)" not in process.log():
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.1)
        assert (tmp_path / "data" / "revoked-keys").read_text() == f"{old_id}\n"

        d = push_package(make_package(tmp_path / "old.efpkg", old_key, version="1"), broker=url, device=device_id)
        refs.append(d.package)
        event = _outcome(watcher, d.deployment_id)
        assert event["phase"] == "failed" and f"key {old_id}, which has been revoked" in event["error"]

        # The revoked key tries to revoke the last key left: refused, and the new key still works.
        result = CliRunner().invoke(main, ["keys", "revoke", new_id, "--key", str(old_key), "--broker", broker_url])
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 15
        while f"revocation of key {new_id}: signed by key {old_id}, which has been revoked" not in process.log():
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.1)
        d = push_package(make_package(tmp_path / "new.efpkg", new_key, version="2"), broker=url, device=device_id)
        refs.append(d.package)
        assert _outcome(watcher, d.deployment_id)["phase"] == "done"

        # Clearing the retained revocation undoes nothing: the agent kept it.
        clear_retained(broker_url, topics.key_revocation(old_id))
        process.stop()
        process.start()
        watcher.wait_for(lambda t, m: t.endswith("/state") and m["status"] == "online" and m.get("model"), timeout=30)
        d = push_package(make_package(tmp_path / "old3.efpkg", old_key, version="3"), broker=url, device=device_id)
        refs.append(d.package)
        assert "revoked" in _outcome(watcher, d.deployment_id)["error"]
        listed = CliRunner().invoke(main, ["keys", "list", str(trusted), "--json"])
        assert {r["key_id"]: r["status"] for r in json.loads(listed.stdout)} == {old_id: "valid", new_id: "valid"}, \
            "keys list reads the directory's revoked file, not a device's data directory"
    finally:
        process.stop()
        watcher.close()
        for key_id in (old_id, new_id):
            clear_retained(broker_url, topics.key_revocation(key_id))
        forget_device(broker_url, device_id, refs)


def test_a_rollback_signed_for_a_group_is_accepted_by_its_members_only(signing_key: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    v1 = make_package(tmp_path / "v1.efpkg", signing_key[0], version="1")
    manifest, ref = describe_package(v1)
    d = sign_rollback(Deployment(deployment_id="d1", package=ref, profile="raspberry-pi-4"), manifest,
                      keys.load_private(signing_key[0]), group="kitchen")
    grant = d.rollback
    assert grant is not None and grant.group == "kitchen" and grant.device is None
    # What the device checks: the signature over the statement, which names the group.
    TrustStore.from_paths([signing_key[1]]).verify_statement(grant.signer, grant.signature, grant.statement(), what="x")
    parsed = Deployment.model_validate_json(d.to_bytes())
    assert parsed.rollback == grant, "the grant survives the wire byte for byte"
    with pytest.raises(ValueError, match="exactly one target"):
        sign_rollback(d, manifest, keys.load_private(signing_key[0]))
