"""The package format: one signed file that carries a model to a device.

A package is a ZIP archive (stored, not deflated: the model formats compress poorly and a
device should not spend CPU inflating them) holding:

    manifest.json      what the model is, what it was compiled for, and the hash of every other file
    manifest.sig       Ed25519 signature of the exact bytes of manifest.json
    model.onnx | model.tflite
    test_vectors.npz   inputs and the outputs the compiler measured, to check the install
    ...                any other file the manifest lists (firmware sources for microcontrollers)

Only the manifest is signed; it pins every other member by SHA-256 and size, so one signature
covers the whole package. The reader trusts nothing before the signature checks out: member
names are matched against a fixed allow-list (no paths), sizes are bounded before reading, and
hashes are checked while streaming. ZIP is read with the standard library's zipfile because it
gives random access to members without unpacking the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.agent.errors import IntegrityError, PackageError, SignatureError
from edgefleet.agent.keys import TrustStore, key_id

FORMAT = "edgefleet.package/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_MEMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a plain file name: no directories, no '..'
_CHUNK = 1 << 20


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quantization(_Schema):
    """Affine quantization of a tensor: real = scale * (q - zero_point), per tensor or per axis."""

    scale: list[float]
    zero_point: list[int]
    axis: int | None = None


class TensorSpec(_Schema):
    name: str
    shape: list[int] = Field(description="Static shape; the compiler fixes dynamic dimensions before packaging.")
    dtype: str = Field(description="NumPy dtype name: float32, float16, int8, uint8, int32, int64.")
    quantization: Quantization | None = None


class Target(_Schema):
    profile: str
    runtime: Literal["onnxruntime", "litert", "tflm"]


class FileEntry(_Schema):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class TestVectors(_Schema):
    __test__ = False  # not a pytest class

    file: str
    count: int = Field(gt=0)
    rtol: float = Field(ge=0)
    atol: float = Field(ge=0)


class Manifest(_Schema):
    format: Literal["edgefleet.package/1"] = FORMAT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
    created_at: float = Field(default_factory=time.time)
    target: Target
    model_file: str
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    compression: dict[str, Any] = Field(description="The chosen compression scheme, verbatim from the compiler.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="What the compiler measured.")
    test_vectors: TestVectors | None = None
    report: dict[str, Any] = Field(default_factory=dict, description="The compiler's report for this target.")
    files: dict[str, FileEntry] = Field(default_factory=dict)
    signer: str = ""

    @property
    def package_id(self) -> str:
        return f"{self.name}@{self.version}:{self.target.profile}"


def write_package(path: Path, manifest: Manifest, files: dict[str, bytes], key: Ed25519PrivateKey) -> Manifest:
    """Write a signed package; returns the manifest as signed (with file hashes and signer filled in)."""
    missing = {manifest.model_file} - files.keys()
    if manifest.test_vectors:
        missing |= {manifest.test_vectors.file} - files.keys()
    if missing:
        raise ValueError(f"files named by the manifest are missing: {sorted(missing)}")
    for name in files:
        if not _MEMBER.match(name) or name in (MANIFEST, SIGNATURE):
            raise ValueError(f"invalid package member name {name!r}")
    entries = {n: FileEntry(sha256=hashlib.sha256(b).hexdigest(), size=len(b)) for n, b in files.items()}
    signed = manifest.model_copy(update={"files": entries, "signer": key_id(key.public_key())})
    manifest_bytes = signed.model_dump_json(indent=2).encode()
    # Validate what we are about to sign, so a bad field fails here and not on a device.
    Manifest.model_validate_json(manifest_bytes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(MANIFEST, manifest_bytes)
        z.writestr(SIGNATURE, key.sign(manifest_bytes))
        for name, data in files.items():
            z.writestr(name, data)
    tmp.replace(path)
    return signed


def read_manifest(source: Path | BinaryIO) -> Manifest:
    """The manifest of a package, without checking its signature (for tools, never for installing)."""
    with _open_zip(source) as z:
        return _parse_manifest(_read_member(z, MANIFEST, MAX_MANIFEST_BYTES), _name(source))


def verify_package(source: Path | BinaryIO, trust: TrustStore) -> Manifest:
    """Check signature, member names, sizes and hashes; return the manifest only if all hold."""
    where = _name(source)
    with _open_zip(source) as z:
        manifest_bytes = _read_member(z, MANIFEST, MAX_MANIFEST_BYTES)
        signature = _read_member(z, SIGNATURE, 128)
        manifest = _parse_manifest(manifest_bytes, where)
        try:
            trust.verify(manifest.signer, signature, manifest_bytes)
        except SignatureError as exc:
            raise SignatureError(str(exc), path=where) from None
        members = {i.filename for i in z.infolist()}
        unexpected = members - manifest.files.keys() - {MANIFEST, SIGNATURE}
        if unexpected:
            raise PackageError(f"members not listed in the manifest: {sorted(unexpected)}", path=where)
        for name, entry in manifest.files.items():
            if name not in members:
                raise IntegrityError(f"{name} is listed in the manifest but missing", path=where)
            digest = _hash_member(z, name, entry.size, where)
            if digest != entry.sha256:
                raise IntegrityError(f"{name}: sha256 {digest[:12]}… does not match the manifest's {entry.sha256[:12]}…", path=where)
    return manifest


def extract_member(source: Path, name: str, dest: BinaryIO, expected: FileEntry) -> None:
    """Copy one member to ``dest``, checking size and hash again (the file may have changed since verify)."""
    h = hashlib.sha256()
    with _open_zip(source) as z, z.open(name) as f:
        remaining = expected.size
        while chunk := f.read(min(_CHUNK, remaining + 1)):
            remaining -= len(chunk)
            if remaining < 0:
                break
            h.update(chunk)
            dest.write(chunk)
    if remaining != 0 or h.hexdigest() != expected.sha256:
        raise IntegrityError(f"{name} changed while it was being installed", path=str(source))


def _name(source: Path | BinaryIO) -> str:
    return str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "<package>")


def _open_zip(source: Path | BinaryIO) -> zipfile.ZipFile:
    where = _name(source)
    try:
        return zipfile.ZipFile(source)
    except FileNotFoundError:
        raise PackageError("no such file", path=where) from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise PackageError(f"not an edgefleet package ({exc}); packages are written by `edgefleet compile`", path=where) from None


def _read_member(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError:
        raise PackageError(f"no {name} inside: not an edgefleet package") from None
    if info.file_size > limit:
        raise PackageError(f"{name} is {info.file_size} bytes, more than the {limit} allowed")
    with z.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise PackageError(f"{name} is larger than the {limit} bytes allowed")
    return data


def _hash_member(z: zipfile.ZipFile, name: str, size: int, where: str) -> str:
    info = z.getinfo(name)
    if info.file_size != size:
        raise IntegrityError(f"{name} is {info.file_size} bytes, the manifest says {size}", path=where)
    h = hashlib.sha256()
    read = 0
    try:
        with z.open(info) as f:
            while chunk := f.read(_CHUNK):
                read += len(chunk)
                if read > size:  # the directory lied about the size
                    raise IntegrityError(f"{name} is longer than the manifest says", path=where)
                h.update(chunk)
    except (zipfile.BadZipFile, OSError) as exc:
        raise IntegrityError(f"{name} is corrupt ({exc})", path=where) from None
    return h.hexdigest()


def _parse_manifest(data: bytes, where: str) -> Manifest:
    try:
        json.loads(data)
        return Manifest.model_validate_json(data)
    except json.JSONDecodeError as exc:
        raise PackageError(f"manifest.json is not JSON ({exc})", path=where) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise PackageError(f"invalid manifest ({problems})", path=where) from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def load_test_vectors(data: bytes) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """Inputs and expected outputs from a ``test_vectors.npz`` written by ``pack_test_vectors``."""
    import numpy as np

    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        n = int(z["count"])
        names_in = [str(s) for s in z["input_names"]]
        n_out = int(z["output_count"])
        inputs = [{name: z[f"in{i}_{j}"] for j, name in enumerate(names_in)} for i in range(n)]
        outputs = [[z[f"out{i}_{k}"] for k in range(n_out)] for i in range(n)]
    return inputs, outputs


def pack_test_vectors(inputs: list[dict[str, Any]], outputs: list[list[Any]]) -> bytes:
    """Serialise test vectors as an ``.npz`` (no pickles, so a device can load it safely)."""
    import numpy as np

    if not inputs or len(inputs) != len(outputs):
        raise ValueError("need as many expected outputs as inputs, and at least one of each")
    names = list(inputs[0])
    arrays: dict[str, Any] = {
        "count": np.array(len(inputs)),
        "input_names": np.array(names),
        "output_count": np.array(len(outputs[0])),
    }
    for i, (feed, outs) in enumerate(zip(inputs, outputs, strict=True)):
        arrays.update({f"in{i}_{j}": np.asarray(feed[n]) for j, n in enumerate(names)})
        arrays.update({f"out{i}_{k}": np.asarray(o) for k, o in enumerate(outs)})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
