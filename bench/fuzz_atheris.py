"""Coverage-guided fuzzing of the agent's parsers with atheris (libFuzzer for Python).

    .venv/bin/pip install atheris          # not a project dependency: only this script needs it
    .venv/bin/python bench/fuzz_atheris.py TARGET [CORPUS_DIR] [libFuzzer flags]
    .venv/bin/python bench/fuzz_atheris.py package -atheris_runs=100000 -max_len=8192

TARGET is what gets the fuzzer's bytes:

    messages   messages.parse, every message type (the first byte picks the type)
    manifest   a package's manifest.json, as the agent parses it
    package    a whole package file: read_manifest, then verify_package against a trusted key
    config     the agent's config file (YAML)
    profile    a hardware profile file (YAML)

Each target may raise only its documented error (MessageError, PackageError, ConfigError,
ProfileError); anything else is a finding: libFuzzer stops, prints the traceback and saves the
input as ``crash-*`` in the current directory. Without CORPUS_DIR, a valid seed input is written
to ``/tmp/edgefleet-atheris/TARGET/`` and used (and grown) as the corpus, so mutation starts from
something that parses. ``tests/test_fuzz.py`` runs the same properties with Hypothesis in the
test suite; this is for long, coverage-guided runs.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from edgefleet.agent import keys, messages
    from edgefleet.agent.config import load_config
    from edgefleet.agent.errors import ConfigError, MessageError, PackageError
    from edgefleet.agent.package import (
        Manifest,
        Target,
        TensorSpec,
        _parse_manifest,
        read_manifest,
        verify_package,
        write_package,
    )
    from edgefleet.hardware_profiles import ProfileError, load_profile

WORK = Path(tempfile.gettempdir()) / "edgefleet-atheris"
KINDS = [messages.Deployment, messages.BenchmarkRequest, messages.KeyRevocation, messages.DeviceState,
         messages.DeploymentEvent, messages.BenchmarkReport, messages.SystemSample]
PROFILE = Path(__file__).resolve().parent.parent / "hardware_profiles" / "raspberry-pi-4.yaml"


def _signed_package() -> tuple[bytes, keys.TrustStore]:
    """A small valid package (the model bytes are never run) and a store trusting its key."""
    key_dir = WORK / "key"
    private = key_dir / "signing.key"
    if not private.exists():
        keys.generate(private)
    manifest = Manifest(name="fuzz", version="1", target=Target(profile="raspberry-pi-4", runtime="onnxruntime"),
                        model_file="model.onnx", inputs=[TensorSpec(name="x", shape=[1, 4], dtype="float32")],
                        outputs=[TensorSpec(name="y", shape=[1, 3], dtype="float32")], compression={"scheme": "fp32"})
    path = WORK / "seed.efpkg"
    write_package(path, manifest, {"model.onnx": b"\x08\x09" * 64}, keys.load_private(private))
    return path.read_bytes(), keys.TrustStore.from_paths([private.with_suffix(".pub")])


def _messages(data: bytes) -> None:
    kind = KINDS[data[0] % len(KINDS)] if data else KINDS[0]
    try:
        messages.parse(kind, data[1:])
    except MessageError:
        pass


def _manifest(data: bytes) -> None:
    try:
        _parse_manifest(data, "fuzz")
    except PackageError:
        pass


def _package_target(trust: keys.TrustStore) -> Callable[[bytes], None]:
    def fuzz(data: bytes) -> None:
        for check in (lambda: read_manifest(io.BytesIO(data)), lambda: verify_package(io.BytesIO(data), trust)):
            try:
                check()
            except PackageError:
                pass

    return fuzz


def _file_target(load: Callable[[Path], object], error: type[Exception], name: str) -> Callable[[bytes], None]:
    path = WORK / name

    def fuzz(data: bytes) -> None:
        path.write_bytes(data)
        try:
            load(path)
        except error:
            pass

    return fuzz


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in ("messages", "manifest", "package", "config", "profile"):
        sys.exit(__doc__)
    target = argv[1]
    WORK.mkdir(parents=True, exist_ok=True)
    package, trust = _signed_package()
    seeds: dict[str, tuple[Callable[[bytes], None], bytes]] = {
        "messages": (_messages, b"\0" + json.dumps({"deployment_id": "d", "profile": "p", "package": {
            "id": "p", "sha256": "ab" * 32, "size": 3, "chunk_size": 2, "chunk_sha256": ["ab" * 32] * 2}}).encode()),
        "manifest": (_manifest, read_manifest(WORK / "seed.efpkg").model_dump_json().encode()),
        "package": (_package_target(trust), package),
        "config": (_file_target(load_config, ConfigError, "agent.yaml"),
                   b"broker: mqtt://fleet.example:1883\ndevice_id: pi\ntrust: [k.pub]\ngroups: [g]\nruns: 5\n"),
        "profile": (_file_target(load_profile, ProfileError, "profile.yaml"), PROFILE.read_bytes()),
    }
    fuzz, seed = seeds[target]
    rest = argv[2:]
    if not rest or rest[0].startswith("-"):
        corpus = WORK / target
        corpus.mkdir(exist_ok=True)
        (corpus / "seed").write_bytes(seed)
        rest = [str(corpus), *rest]
    atheris.Setup([argv[0], *rest], fuzz)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
