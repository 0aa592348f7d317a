"""Property-based fuzzing of every parser that sees outside input.

MQTT payloads (``messages.parse`` for every message type), manifests, package archives,
hardware profile YAML, the agent's config file and chunk reassembly get random bytes, random
JSON or YAML, and valid inputs mutated byte by byte. The property is always the same: the parser
returns a value or raises its documented error type (MessageError, PackageError, ProfileError,
ConfigError, IntegrityError), nothing else, and its memory stays bounded (``tracemalloc``).
A real agent process then takes a stream of such payloads on every topic it listens to, and
must still be alive and install a good package afterwards.

Quick by default (the ``default`` Hypothesis profile in conftest.py); ``HYPOTHESIS_PROFILE=long``
runs 3000 examples per property. ``bench/fuzz_atheris.py`` does coverage-guided runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
import tracemalloc
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import AgentProcess, Watcher, clear_retained, make_package
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from edgefleet.agent import keys, messages, topics
from edgefleet.agent.config import load_config
from edgefleet.agent.errors import (
    ConfigError,
    IntegrityError,
    MessageError,
    PackageError,
)
from edgefleet.agent.keys import TrustStore
from edgefleet.agent.messages import PackageRef, parse
from edgefleet.agent.package import _parse_manifest, read_manifest, verify_package
from edgefleet.agent.transfer import ChunkedDownload
from edgefleet.agent.transport import BrokerURL
from edgefleet.deploy.link import BrokerLink
from edgefleet.deploy.push import clear_deployment, clear_package, push_package
from edgefleet.hardware_profiles import ProfileError, load_profile

MiB = 1024**2

# --- inputs ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, max_ops: int = 8) -> bytes:
    """``seed`` with a few byte flips, deletions, insertions, duplications and a possible truncation."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "duplicate", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("{"), ord('"'), ord("["), ord(":")]))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def _json_mutation(seed: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """``seed`` with one field replaced, removed or added, as JSON."""

    @st.composite
    def strategy(draw: st.DrawFn) -> bytes:
        doc = json.loads(json.dumps(seed))
        node: Any = doc
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict) or not node[key]:
                break
            node = node[key]
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()):
                node[key] = draw(json_values)
            else:
                del node[key]
        else:
            doc[draw(st.text(max_size=8))] = draw(json_values)
        return json.dumps(doc).encode()

    return strategy()


def _within_memory(fn: Callable[[], object], limit: int) -> None:
    """Run ``fn``; fail if Python allocated more than ``limit`` bytes at its peak."""
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < limit, f"peak {peak / MiB:.1f} MiB over the {limit / MiB:.0f} MiB bound"


# --- seeds: one valid input of each kind --------------------------------------------------------


@functools.cache
def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edgefleet-fuzz-"))


@functools.cache
def _key() -> tuple[Path, Path]:
    return keys.generate(_workdir() / "signing.key")


@functools.cache
def _package() -> bytes:
    return make_package(_workdir() / "seed.efpkg", _key()[0]).read_bytes()


@functools.cache
def _trust() -> TrustStore:
    return TrustStore.from_paths([_key()[1]])


_SHA = "ab" * 32
_REF = {"id": "tiny@1:raspberry-pi-4", "sha256": _SHA, "size": 10, "chunk_size": 4, "chunk_sha256": [_SHA] * 3}
_LATENCY = {"mean": 1.0, "std": 0.1, "min": 0.9, "p50": 1.0, "p90": 1.1, "p99": 1.2, "max": 1.3}
SEEDS: dict[type[BaseModel], dict[str, Any]] = {
    messages.Deployment: {"deployment_id": "d1", "package": _REF, "profile": "raspberry-pi-4", "issued_at": 1.0,
                          "rollback": {"device": "pi", "deployment_id": "d1", "issued_at": 1.0,
                                       "package_id": "tiny@1:raspberry-pi-4", "sha256": _SHA, "version": "1",
                                       "signer": "0123456789abcdef", "signature": "AAAA"}},
    messages.BenchmarkRequest: {"request_id": "r1", "package": _REF, "profile": "raspberry-pi-4", "runs": 5},
    messages.KeyRevocation: {"key_id": "0123456789abcdef", "signer": "fedcba9876543210", "signature": "AAAA"},
    messages.DeviceState: {"device_id": "pi", "status": "online", "groups": ["g"], "labels": {"site": "a"},
                           "model": {"package_id": "tiny@1:p", "name": "tiny", "version": "1",
                                     "runtime": "onnxruntime", "sha256": _SHA, "installed_at": 1.0}},
    messages.DeploymentEvent: {"device_id": "pi", "deployment_id": "d1", "package_id": "p", "phase": "failed",
                               "error": "x"},
    messages.BenchmarkReport: {"device_id": "pi", "profile": "p", "simulated": True, "package_id": "p",
                               "model_name": "m", "model_version": "1", "runtime": "onnxruntime",
                               "runtime_version": "1", "threads": 1, "warmup": 1, "runs": 10, "load_ms": 1.0,
                               "first_inference_ms": 1.0, "latency_ms": _LATENCY, "throughput_ips": 1.0,
                               "peak_rss_mb": 1.0, "cpu_percent": 1.0, "power": {"watts": 1.0, "source": "estimate"},
                               "energy_mj": 1.0},
    messages.SystemSample: {"device_id": "pi", "profile": "p", "cpu_percent": 1.0, "memory_used_mb": 1.0,
                            "memory_total_mb": 2.0, "disk_free_mb": 1.0, "disk_used_percent": 1.0, "uptime_s": 1.0,
                            "agent_uptime_s": 1.0},
}
MESSAGE_TYPES = sorted(SEEDS, key=lambda t: t.__name__)


def test_every_message_type_has_a_seed() -> None:
    defined = {v for v in vars(messages).values() if isinstance(v, type) and issubclass(v, messages._Message)
               and v is not messages._Message and "kind" in v.model_fields}
    assert defined <= set(SEEDS), f"add a seed for {sorted(t.__name__ for t in defined - set(SEEDS))}"
    for kind, seed in SEEDS.items():
        parse(kind, json.dumps(seed).encode())  # the seeds are valid


def _parses_or_refuses(kind: type[BaseModel], payload: bytes) -> None:
    try:
        parse(kind, payload, topic="fuzz")
    except MessageError as exc:
        assert str(exc).startswith("fuzz: malformed message")


# --- MQTT payloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=lambda t: t.__name__)
@given(payload=st.binary(max_size=512))
def test_random_bytes_are_a_message_or_a_message_error(kind: type[BaseModel], payload: bytes) -> None:
    _parses_or_refuses(kind, payload)


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=lambda t: t.__name__)
@given(value=json_values)
def test_random_json_is_a_message_or_a_message_error(kind: type[BaseModel], value: Any) -> None:
    _parses_or_refuses(kind, json.dumps(value).encode())


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=lambda t: t.__name__)
@given(data=st.data())
def test_mutated_messages_are_a_message_or_a_message_error(kind: type[BaseModel], data: st.DataObject) -> None:
    seed = SEEDS[kind]
    payload = data.draw(st.one_of(_json_mutation(seed), mutated(json.dumps(seed).encode())))
    _parses_or_refuses(kind, payload)


@pytest.mark.parametrize("payload", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"deployment_id": "' + b"x" * (8 * MiB) + b'"}',
    b'{"package": {"size": ' + b"9" * 100_000 + b"}}",
    b'{"package": {"chunk_sha256": [' + b",".join([b'"' + b"ab" * 32 + b'"'] * 100_000) + b"]}}",
], ids=["deep-array", "deep-object", "huge-string", "huge-integer", "many-chunks"])
def test_hostile_payloads_are_refused_within_bounded_memory(payload: bytes) -> None:
    # Linear in the payload (which the broker caps): no nesting or number makes it blow up.
    _within_memory(lambda: _parses_or_refuses(messages.Deployment, payload), limit=16 * len(payload) + 4 * MiB)


# --- manifests and packages ----------------------------------------------------------------


def _manifest_seed() -> bytes:
    with zipfile.ZipFile(_workdir() / "seed.efpkg") as z:
        return z.read("manifest.json")


def _manifest_or_package_error(payload: bytes) -> None:
    try:
        _parse_manifest(payload, "fuzz.efpkg")
    except PackageError as exc:
        assert "fuzz.efpkg" in str(exc)


@given(payload=st.binary(max_size=1024) | json_values.map(lambda v: json.dumps(v).encode()))
def test_random_manifests_are_refused_with_a_package_error(payload: bytes) -> None:
    _manifest_or_package_error(payload)


@given(data=st.data())
def test_mutated_manifests_are_refused_with_a_package_error(data: st.DataObject) -> None:
    _package()
    seed = _manifest_seed()
    payload = data.draw(st.one_of(_json_mutation(json.loads(seed)), mutated(seed)))
    _manifest_or_package_error(payload)


def _open_package(payload: bytes, tmp: Path) -> None:
    path = tmp / f"{uuid.uuid4().hex}.efpkg"
    path.write_bytes(payload)
    try:
        for check in (lambda: read_manifest(path), lambda: verify_package(path, _trust())):
            try:
                check()
            except PackageError as exc:  # SignatureError and IntegrityError are PackageErrors
                assert str(path) in str(exc)
    finally:
        path.unlink()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_packages_verify_or_are_refused_with_a_package_error(data: st.DataObject, tmp_path: Path) -> None:
    payload = data.draw(mutated(_package(), max_ops=4))
    _within_memory(lambda: _open_package(payload, tmp_path), limit=16 * MiB)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=2048))
def test_random_files_are_not_packages(payload: bytes, tmp_path: Path) -> None:
    _open_package(b"PK\x03\x04" + payload if payload[:1] == b"P" else payload, tmp_path)


def test_a_compression_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.efpkg"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", b"{}")
        z.writestr("model.onnx", b"\0" * (200 * MiB))
    assert bomb.stat().st_size < MiB

    def refuse() -> None:
        with pytest.raises(PackageError, match="compression bomb"):
            verify_package(bomb, _trust())

    _within_memory(refuse, limit=2 * MiB)


# --- hardware profiles and the agent config -------------------------------------------------

_PROFILE_SEED = (Path(__file__).parent.parent / "hardware_profiles" / "raspberry-pi-4.yaml").read_text()
_CONFIG_SEED = ("broker: mqtt://fleet.example:1883\ndevice_id: pi-kitchen\ntrust: [signing.pub]\n"
                "groups: [kitchen]\nlabels: {site: home}\nwarmup: 5\nruns: 100\nkeep_versions: 2\n")
yaml_texts = st.one_of(
    st.text(max_size=300),
    json_values.map(lambda v: yaml.safe_dump(v)),
    st.dictionaries(st.text(max_size=12), json_values, max_size=6).map(lambda v: yaml.safe_dump(v)),
)


def _profile_or_profile_error(text: str | bytes, tmp: Path) -> None:
    path = tmp / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", errors="surrogatepass"))
    try:
        load_profile(path)
    except ProfileError as exc:
        assert str(path) in str(exc)


def _config_or_config_error(text: str | bytes, tmp: Path) -> None:
    path = tmp / "agent.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", errors="surrogatepass"))
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=yaml_texts)
def test_random_profiles_load_or_raise_a_profile_error(text: str, tmp_path: Path) -> None:
    _profile_or_profile_error(text, tmp_path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=mutated(_PROFILE_SEED.encode()))
def test_mutated_profiles_load_or_raise_a_profile_error(payload: bytes, tmp_path: Path) -> None:
    _profile_or_profile_error(payload, tmp_path)  # raw bytes: not always UTF-8


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=yaml_texts)
def test_random_configs_load_or_raise_a_config_error(text: str, tmp_path: Path) -> None:
    _config_or_config_error(text, tmp_path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=mutated(_CONFIG_SEED.encode()))
@example(payload=b"device_id: pi\xfd\n")  # not UTF-8: crashed load_config until the atheris harness found it
def test_mutated_configs_load_or_raise_a_config_error(payload: bytes, tmp_path: Path) -> None:
    _config_or_config_error(payload, tmp_path)  # raw bytes: bench/fuzz_atheris.py found non-UTF-8 crashing it


def _billion_laughs(key: str) -> str:
    """YAML aliases nested 9 deep: 9**9 strings to anything that walks the document naively."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join([*lines, f"{key}: [{', '.join(['*l8'] * 9)}]"]) + "\n"


@pytest.mark.parametrize("key", ["groups", "labels", "trust", "runs"])
def test_a_config_of_nested_aliases_is_refused_within_bounded_memory(key: str, tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(_billion_laughs(key))
    _within_memory(lambda: pytest.raises(ConfigError, load_config, path), limit=16 * MiB)


@pytest.mark.parametrize("key", ["description", "cpu", "formats"])
def test_a_profile_of_nested_aliases_is_refused_within_bounded_memory(key: str, tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(_PROFILE_SEED + "\n" + _billion_laughs(key))  # the later key replaces the profile's own
    _within_memory(lambda: pytest.raises(ProfileError, load_profile, path), limit=16 * MiB)


# --- chunk reassembly ------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), body=st.binary(min_size=1, max_size=300), chunk_size=st.integers(1, 64))
def test_chunks_in_any_order_with_junk_reassemble_exactly(data: st.DataObject, body: bytes, chunk_size: int,
                                                          tmp_path: Path) -> None:
    pieces = [body[i:i + chunk_size] for i in range(0, len(body), chunk_size)]
    ref = PackageRef(id="p", sha256=hashlib.sha256(body).hexdigest(), size=len(body), chunk_size=chunk_size,
                     chunk_sha256=[hashlib.sha256(p).hexdigest() for p in pieces])
    directory = tmp_path / uuid.uuid4().hex
    download = ChunkedDownload(directory, ref)
    deliveries = data.draw(st.lists(st.one_of(
        st.tuples(st.integers(0, len(pieces) - 1)).map(lambda t: (t[0], pieces[t[0]])),  # right, maybe twice
        st.tuples(st.integers(-5, len(pieces) + 5), st.binary(max_size=80)),  # junk, any index
    ), max_size=3 * len(pieces)))
    for index, chunk in [*deliveries, *enumerate(pieces)]:
        if data.draw(st.booleans()):  # an agent restart between two chunks: the index is read back from disk
            download = ChunkedDownload(directory, ref)
        try:
            download.accept(index, chunk)
        except IntegrityError as exc:
            assert f"chunk {index}" in str(exc)
    assert download.complete
    assert download.finish().read_bytes() == body
    assert sorted(p.name for p in directory.iterdir()) == [f"{ref.sha256}.efpkg"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ref=st.builds(PackageRef, id=st.text(max_size=10), sha256=st.just(_SHA), size=st.integers(1, 1 << 40),
                     chunk_size=st.integers(1, 1 << 40), chunk_sha256=st.lists(st.just(_SHA), min_size=1, max_size=4),
                     url=st.none()))
def test_a_deployment_whose_chunks_do_not_add_up_is_refused_before_any_disk_is_used(ref: PackageRef,
                                                                                   tmp_path: Path) -> None:
    directory = tmp_path / uuid.uuid4().hex
    try:
        download = ChunkedDownload(directory, ref)
    except IntegrityError as exc:
        assert "chunk hashes" in str(exc)
        return
    except OSError:  # a size the filesystem cannot hold (the agent reports it as a failed download)
        return
    assert download.part.stat().st_blocks == 0, "the part file is sparse until chunks arrive"


# --- a real agent takes it all ---------------------------------------------------------------


def test_a_real_agent_survives_a_stream_of_fuzzed_payloads(broker_url: str, signing_key: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    device_id = f"test-fuzz-{uuid.uuid4().hex[:8]}"
    watcher = Watcher(broker_url, f"edgefleet/v1/devices/{device_id}/#")
    agent = AgentProcess(broker_url, device_id, tmp_path / "data", signing_key[1]).start()
    revocation_topic = topics.key_revocation("0123456789abcdef")
    try:
        watcher.wait_for(lambda t, m: t.endswith("/state") and m["status"] == "online", timeout=30)
        payloads: list[bytes] = []
        # For another profile, so a deployment that survives mutation is refused at once instead of
        # waiting for chunks; without issued_at, which a fuzzed far future would make the agent
        # ignore every later deployment as older (deploy topics are for the fleet alone: see the ACL).
        seeds = [{k: v for k, v in SEEDS[kind].items() if k != "issued_at"} | {"profile": "fuzz-profile"}
                 for kind in (messages.Deployment, messages.BenchmarkRequest)]

        @settings(max_examples=60, database=None)
        @given(payload=st.one_of(st.binary(max_size=300), *map(_json_mutation, seeds),
                                 _json_mutation(SEEDS[messages.KeyRevocation])))
        def collect(payload: bytes) -> None:
            if b"issued_at" not in payload:
                payloads.append(payload)

        collect()
        url = BrokerURL.parse(broker_url)
        targets = [topics.device_deploy(device_id), topics.benchmark_requests(device_id), revocation_topic]
        with BrokerLink(url, timeout=30) as link:
            link.publish([(targets[i % 3], p) for i, p in enumerate(payloads)], total=len(payloads))
        deployment = push_package(make_package(tmp_path / "good.efpkg", signing_key[0], version="7"),
                                  broker=url, device=device_id)
        try:
            _, event = watcher.wait_for(lambda t, m: t.endswith("/events") and m.get("deployment_id")
                                        == deployment.deployment_id and m["phase"] in ("done", "failed"), timeout=90)
            assert event["phase"] == "done", event
            assert agent.alive(), agent.log()
            assert "malformed message" in agent.log(), "the fuzzed payloads reached the agent"
            assert "Traceback" not in agent.log()
        finally:
            clear_deployment(url, device=device_id)
            clear_package(url, deployment.package)
    finally:
        agent.stop()
        watcher.close()
        clear_retained(broker_url, revocation_topic)
        clear_retained(broker_url, topics.state(device_id))

