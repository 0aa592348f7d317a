"""The installed models on disk, switched atomically so a device never serves a half-written one.

    DATA_DIR/
      packages/<sha256[:16]>/     one verified, unpacked package per directory (manifest.json, model, ...)
      packages/.staging-*/        a package being unpacked; removed at start-up if a crash left one
      current -> packages/<...>   the serving model: a symlink replaced by rename(2), which is atomic
      versions.json               per model name, the newest version ever installed (anti-rollback)

A package is unpacked into a staging directory, every file and the directory are fsynced, the
directory is renamed into place, and only then does ``current`` move. A crash at any point
leaves ``current`` pointing at a complete package: the old one or the new one.

``versions.json`` is the anti-rollback high-water mark: it only rises (except by a signed
rollback, which sets it to the version rolled back to), and it is kept apart from the package
directories so that pruning or deleting old versions never lowers it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.errors import PackageError
from edgefleet.agent.faults import crash_point
from edgefleet.agent.package import MANIFEST, Manifest, compare_versions, extract_member

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    directory: Path
    manifest: Manifest
    sha256: str

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest.model_file


class ModelStore:
    def __init__(self, data_dir: Path, *, keep: int = 3) -> None:
        self.root = Path(data_dir)
        self.packages = self.root / "packages"
        self.current_link = self.root / "current"
        self.versions_path = self.root / "versions.json"
        self.keep = keep
        self.packages.mkdir(parents=True, exist_ok=True)

    def clean_up(self) -> None:
        """Remove staging directories that a crash left behind; they were never made current."""
        for leftover in self.packages.glob(".staging-*"):
            log.warning("removing an unfinished install left by a crash: %s", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)
        for tmp in [*self.root.glob(".current-*"), *self.root.glob(".versions-*")]:
            tmp.unlink(missing_ok=True)

    def version_floor(self, name: str) -> str | None:
        """The newest version of model ``name`` ever installed here (or rolled back to), if any.

        A store from before the high-water mark existed starts from the serving model's version.
        """
        floor = self._versions().get(name)
        if floor is not None:
            return floor
        try:
            current = self.current()
        except PackageError:  # an unreadable serving model must not block installing a good one
            return None
        return current.manifest.version if current is not None and current.manifest.name == name else None

    def record_version(self, manifest: Manifest, *, rollback: bool = False) -> None:
        """Raise the high-water mark of ``manifest.name`` to its version; a signed rollback sets it instead.

        Called before ``current`` moves: a crash in between leaves the mark at most one install ahead
        of the serving model, which the deployment, when it is retried, satisfies.
        """
        versions = self._versions()
        old = versions.get(manifest.name)
        if not rollback and old is not None and compare_versions(manifest.version, old) <= 0:
            return
        versions[manifest.name] = manifest.version
        tmp = self.root / f".versions-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(versions, indent=1, sort_keys=True))
        _fsync(tmp)
        os.replace(tmp, self.versions_path)
        _fsync_dir(self.root)

    def _versions(self) -> dict[str, str]:
        try:
            raw = json.loads(self.versions_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Refuse rather than guess: an unreadable mark read as "nothing installed yet" would let
            # any old version in.
            raise PackageError(f"the anti-rollback record {self.versions_path} is unreadable ({exc}); restore it, "
                               "or delete it to start again from the serving model's version") from None
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise PackageError(f"the anti-rollback record {self.versions_path} is not a JSON object of versions; "
                               "restore it, or delete it to start again from the serving model's version")
        return raw

    def current(self) -> InstalledPackage | None:
        if not self.current_link.is_symlink():
            return None
        return self._load(self.current_link.resolve())

    def installed(self, name: str) -> InstalledPackage | None:
        """A package still on disk, by its directory name under ``packages/``."""
        directory = self.packages / name
        if name.startswith(".") or "/" in name or not directory.is_dir():
            return None
        return self._load(directory)

    def stage(self, package_path: Path, manifest: Manifest, sha256: str) -> InstalledPackage:
        """Unpack a verified package into its own directory (not yet serving)."""
        final = self.packages / sha256[:16]
        if final.is_dir():
            return self._load(final)
        staging = self.packages / f".staging-{sha256[:16]}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            (staging / MANIFEST).write_bytes(manifest.model_dump_json(indent=2).encode())
            _fsync(staging / MANIFEST)
            for name, entry in manifest.files.items():
                with open(staging / name, "wb") as out:
                    extract_member(package_path, name, out, entry)
                    out.flush()
                    os.fsync(out.fileno())
                crash_point("staging")
            (staging / "SHA256").write_text(sha256)
            _fsync(staging / "SHA256")
            _fsync_dir(staging)
            staging.rename(final)
            _fsync_dir(self.packages)
            crash_point("staged")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self._load(final)

    def activate(self, installed: InstalledPackage) -> None:
        """Make ``installed`` the serving model, atomically."""
        tmp = self.root / f".current-{uuid.uuid4().hex[:8]}"
        tmp.symlink_to(installed.directory.relative_to(self.root))
        crash_point("activating")
        os.replace(tmp, self.current_link)
        _fsync_dir(self.root)
        crash_point("activated")
        self._prune(keep_also=installed.directory)

    def discard(self, installed: InstalledPackage) -> None:
        """Remove a staged package that failed its checks, unless it is serving."""
        current = self.current()
        if current is None or current.directory != installed.directory:
            # Renamed out of the way first: a crash in the middle of rmtree would otherwise leave a
            # half-deleted directory under the name that ``stage`` reuses as a finished install.
            doomed = self.packages / f".staging-discard-{installed.directory.name}-{uuid.uuid4().hex[:8]}"
            crash_point("rollback:discarding")
            try:
                installed.directory.rename(doomed)
            except FileNotFoundError:
                return
            crash_point("rollback:discarded")
            shutil.rmtree(doomed, ignore_errors=True)

    def _prune(self, keep_also: Path) -> None:
        dirs = sorted((d for d in self.packages.iterdir() if d.is_dir() and not d.name.startswith(".")),
                      key=lambda d: d.stat().st_mtime, reverse=True)
        for old in dirs[self.keep:]:
            if old != keep_also:
                shutil.rmtree(old, ignore_errors=True)

    def _load(self, directory: Path) -> InstalledPackage:
        try:
            manifest = Manifest.model_validate_json((directory / MANIFEST).read_bytes())
            sha = (directory / "SHA256").read_text().strip()
        except (OSError, ValueError) as exc:
            raise PackageError(f"installed package {directory.name} is unreadable ({exc})", path=str(directory)) from None
        return InstalledPackage(directory=directory, manifest=manifest, sha256=sha)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory holding it is fsynced.
    _fsync(path)
