"""The package format: one signed file that carries a model to a device.

A package is a ZIP archive (stored, not deflated: the model formats compress poorly and a
device should not spend CPU inflating them) holding:

    manifest.json      what the model is, what it was compiled for, and the hash of every other file
    manifest.sig       Ed25519 signature of the exact bytes of manifest.json
    model.onnx | model.tflite
    test_vectors.npz   inputs and the outputs the compiler measured, to check the install
    ...                any other file the manifest lists (firmware sources for microcontrollers)

Only the manifest is signed; it pins every other member by SHA-256 and size, so one signature
covers the whole package. The reader trusts nothing before the signature checks out: the archive
is refused as a whole (``ArchiveLimits``) if its central directory declares too many entries, a
name that is a path (``../``, absolute, backslashes), a duplicate name, a symlink or directory,
an encrypted or exotically compressed member, more bytes than allowed uncompressed, or a
compression ratio typical of a zip bomb; the manifest is capped in bytes and JSON nesting depth;
every read is bounded again while streaming, because headers can lie; and hashes are checked
while streaming. ZIP is read with the standard library's zipfile because it gives random access
to members without unpacking the rest.

Versions are ordered by ``compare_versions`` (a device refuses to go back to an older one unless
told to by a signed rollback).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
MAX_MANIFEST_DEPTH = 32  # the format nests about 6 deep; the compiler's report a few more
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


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """What a package archive may declare before anything in it is read.

    Checked against the ZIP central directory when the archive is opened, and again while
    streaming (a lying header gets no further than the size it declared). The defaults leave room
    for models of a few hundred MB on a Raspberry Pi; a device with less disk can pass smaller ones.
    """

    max_entries: int = 64  # a package has a manifest, a signature, a model, test vectors and a few sources
    max_total_bytes: int = 2 * 1024**3  # every member uncompressed, added up
    max_ratio: float = 100.0  # uncompressed / compressed; model weights deflate by ~1.1, a zip bomb by ~1000
    ratio_floor: int = 1024**2  # members smaller than this are not ratio-checked: they cannot hurt


DEFAULT_LIMITS = ArchiveLimits()
_COMPRESSIONS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
# Everything zipfile and zlib raise on a malformed archive, so none escapes as an unexpected crash.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError, EOFError, ValueError,
               struct.error, NotImplementedError, RuntimeError, OverflowError)


def read_manifest(source: Path | BinaryIO, *, limits: ArchiveLimits = DEFAULT_LIMITS) -> Manifest:
    """The manifest of a package, without checking its signature (for tools, never for installing)."""
    with _open_zip(source, limits) as z:
        return _parse_manifest(_read_member(z, MANIFEST, MAX_MANIFEST_BYTES, _name(source)), _name(source))


def verify_package(source: Path | BinaryIO, trust: TrustStore, *, limits: ArchiveLimits = DEFAULT_LIMITS) -> Manifest:
    """Check the archive, signature, member names, sizes and hashes; return the manifest only if all hold."""
    where = _name(source)
    with _open_zip(source, limits) as z:
        manifest_bytes = _read_member(z, MANIFEST, MAX_MANIFEST_BYTES, where)
        signature = _read_member(z, SIGNATURE, 128, where)
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
    remaining = expected.size
    try:
        with _open_zip(source, DEFAULT_LIMITS) as z, z.open(name) as f:
            while chunk := f.read(min(_CHUNK, remaining + 1)):
                remaining -= len(chunk)
                if remaining < 0:
                    break
                h.update(chunk)
                dest.write(chunk)
    except (PackageError, KeyError, *_ZIP_ERRORS) as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            raise  # writing ``dest`` failed (a full disk): not the package's fault, the caller reports it
        raise IntegrityError(f"{name} changed while it was being installed ({exc})", path=str(source)) from None
    if remaining != 0 or h.hexdigest() != expected.sha256:
        raise IntegrityError(f"{name} changed while it was being installed", path=str(source))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as manifest version ``a`` is older than, the same as, or newer than ``b``.

    Hand-written rather than ``packaging.version``: that is not a dependency of an agent-only
    install, and manifest versions need not be PEP 440 (``2b``, ``2026.11.3-nightly``). The order
    is natural: runs of digits compare as numbers, runs of letters as text, a number is newer than
    letters in the same place, and a version that extends another is newer (``1.0.1`` > ``1.0`` >
    ``1``); ``.``, ``-``, ``_`` and ``+`` only separate. There are no pre-releases: ``1.0rc1`` is
    newer than ``1.0``, so name a release candidate ``0.9.rc1`` or number it below the release.
    """
    ka, kb = _version_key(a), _version_key(b)
    return (ka > kb) - (ka < kb)


def _version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    return tuple((1, int(t), "") if t.isdigit() else (0, 0, t) for t in _VERSION_TOKEN.findall(version))


_VERSION_TOKEN = re.compile(r"[0-9]+|[A-Za-z]+")


def _name(source: Path | BinaryIO) -> str:
    return str(source) if isinstance(source, (str, Path)) else getattr(source, "name", "<package>")


@contextmanager
def _open_zip(source: Path | BinaryIO, limits: ArchiveLimits) -> Iterator[zipfile.ZipFile]:
    """The archive, once its central directory has passed ``_check_archive``; closed on exit."""
    where = _name(source)
    owned = isinstance(source, (str, Path))
    try:
        # Not a with-block: the file stays open while the caller reads the archive, closed in finally below.
        f: BinaryIO = open(source, "rb") if owned else source  # type: ignore[arg-type, assignment]  # noqa: SIM115
    except FileNotFoundError:
        raise PackageError("no such file", path=where) from None
    except OSError as exc:
        raise PackageError(f"cannot read the package ({exc.strerror or exc})", path=where) from None
    try:
        try:
            declared = _declared_entries(f)
            if declared is not None and declared > limits.max_entries:
                raise PackageError(f"the archive declares {declared} entries, more than the {limits.max_entries} "
                                   "a package may have: refused before reading it", path=where)
            z = zipfile.ZipFile(f)
        except _ZIP_ERRORS as exc:
            raise PackageError(f"not an edgefleet package ({exc}); packages are written by `edgefleet compile`",
                               path=where) from None
        with z:
            _check_archive(z, limits, where)
            yield z
    finally:
        if owned:
            f.close()


def _declared_entries(f: BinaryIO) -> int | None:
    """How many entries the end-of-central-directory record declares, or None if there is none.

    Read by hand before zipfile, which builds an object per central directory entry as it opens
    an archive: one claiming millions would cost memory before any check of ours could run.
    zipfile's own reader of this record is private, hence these few lines.
    """
    f.seek(0, 2)
    size = f.tell()
    tail_len = min(size, 22 + 0xFFFF)  # the record, and a comment of at most 64 KiB after it
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    f.seek(0)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    (entries,) = struct.unpack_from("<H", tail, at + 10)
    if entries == 0xFFFF and at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":  # ZIP64: the count is elsewhere
        (offset,) = struct.unpack_from("<Q", tail, at - 20 + 8)
        if offset < size:
            f.seek(offset)
            record = f.read(56)
            f.seek(0)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                (entries,) = struct.unpack_from("<Q", record, 32)
    return int(entries)


def _check_archive(z: zipfile.ZipFile, limits: ArchiveLimits, where: str) -> None:
    """Refuse an archive whose central directory is hostile, before any member is read."""
    infos = z.infolist()
    if len(infos) > limits.max_entries:
        raise PackageError(f"the archive has {len(infos)} entries, more than the {limits.max_entries} a package "
                           "may have", path=where)
    seen: set[str] = set()
    total = 0
    for info in infos:
        raw = info.orig_filename
        if not raw or not info.filename:  # zipfile cuts a name at its first NUL, to nothing here
            raise PackageError("a member has an empty name: refused", path=where)
        if raw.startswith(("/", "\\")) or "\\" in raw or "\x00" in raw or ".." in raw.split("/") or ":" in raw:
            raise PackageError(f"member {raw[:80]!r} is a path that leaves the package (path traversal): "
                               "refused", path=where)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PackageError(f"member {raw[:80]!r} is a symbolic link: refused", path=where)
        if "/" in raw:
            raise PackageError(f"member {raw[:80]!r} is in a directory: a package holds plain files only", path=where)
        if raw not in (MANIFEST, SIGNATURE) and not _MEMBER.match(raw):
            raise PackageError(f"member name {raw[:80]!r} is not a plain file name (letters, digits, '.', '_', "
                               "'-')", path=where)
        if raw.lower() in seen:
            raise PackageError(f"member {raw!r} appears twice in the archive: refused (which one would be "
                               "installed is ambiguous)", path=where)
        seen.add(raw.lower())
        if info.flag_bits & 0x1:
            raise PackageError(f"member {raw!r} is encrypted: packages are signed, not encrypted", path=where)
        if info.compress_type not in _COMPRESSIONS:
            raise PackageError(f"member {raw!r} uses compression method {info.compress_type}; packages use "
                               "stored or deflated members only", path=where)
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise PackageError(f"member {raw!r} is stored but its sizes disagree ({info.compress_size} != "
                               f"{info.file_size}): the archive is corrupt or forged", path=where)
        total += info.file_size
        if total > limits.max_total_bytes:
            raise PackageError(f"the archive unpacks to more than {limits.max_total_bytes} bytes: refused",
                               path=where)
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise PackageError(f"member {raw!r} inflates {info.compress_size} bytes to {info.file_size} (more than "
                               f"{limits.max_ratio:g}x): refused as a compression bomb", path=where)


def _read_member(z: zipfile.ZipFile, name: str, limit: int, where: str = "") -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError:
        raise PackageError(f"no {name} inside: not an edgefleet package", path=where) from None
    if info.file_size > limit:
        raise PackageError(f"{name} is {info.file_size} bytes, more than the {limit} allowed", path=where)
    try:
        with z.open(info) as f:
            data = f.read(limit + 1)  # bounded whatever the header said
    except _ZIP_ERRORS as exc:
        raise PackageError(f"{name} cannot be read ({exc}): the archive is corrupt", path=where) from None
    if len(data) > limit:
        raise PackageError(f"{name} is larger than the {limit} bytes allowed", path=where)
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
    except _ZIP_ERRORS as exc:
        raise IntegrityError(f"{name} is corrupt ({exc})", path=where) from None
    return h.hexdigest()


# A JSON string (skipped whole, so brackets inside it do not count) or a bracket. Possessive
# quantifiers keep the scan linear on hostile input.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


def manifest_depth(data: bytes) -> int:
    """How deeply the JSON in ``data`` nests, found without parsing it (so without recursion)."""
    depth = deepest = 0
    for match in _JSON_TOKEN.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"duplicate key(s) {duplicated[:3]}: which value counts would be ambiguous")
    return dict(pairs)


def _parse_manifest(data: bytes, where: str) -> Manifest:
    depth = manifest_depth(data)
    if depth > MAX_MANIFEST_DEPTH:
        raise PackageError(f"manifest.json nests {depth} levels deep, more than the {MAX_MANIFEST_DEPTH} allowed",
                           path=where)
    try:
        json.loads(data, object_pairs_hook=_no_duplicate_keys)
        return Manifest.model_validate_json(data)
    except json.JSONDecodeError as exc:
        raise PackageError(f"manifest.json is not JSON ({exc})", path=where) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise PackageError(f"invalid manifest ({problems})", path=where) from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, a duplicate key, an integer of 5000 digits
        raise PackageError(f"invalid manifest.json ({str(exc)[:200]})", path=where) from None


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
