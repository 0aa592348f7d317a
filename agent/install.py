"""The installed models on disk, switched atomically so a device never serves a half-written one.

    DATA_DIR/
      packages/<sha256[:16]>/     one verified, unpacked package per directory (manifest.json, model, ...)
      packages/.staging-*/        a package being unpacked; removed at start-up if a crash left one
      current -> packages/<...>   the serving model: a symlink replaced by rename(2), which is atomic

A package is unpacked into a staging directory, every file and the directory are fsynced, the
directory is renamed into place, and only then does ``current`` move. A crash at any point
leaves ``current`` pointing at a complete package: the old one or the new one.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.errors import PackageError
from edgefleet.agent.faults import crash_point
from edgefleet.agent.package import MANIFEST, Manifest, extract_member

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
        self.keep = keep
        self.packages.mkdir(parents=True, exist_ok=True)

    def clean_up(self) -> None:
        """Remove staging directories that a crash left behind; they were never made current."""
        for leftover in self.packages.glob(".staging-*"):
            log.warning("removing an unfinished install left by a crash: %s", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)
        for tmp in self.root.glob(".current-*"):
            tmp.unlink(missing_ok=True)

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
            shutil.rmtree(installed.directory, ignore_errors=True)

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
