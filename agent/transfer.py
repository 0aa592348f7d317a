"""Reassembling a package from its MQTT chunks, on disk, resumable.

Each chunk is checked against its own SHA-256 before it is written at its offset in a
``.part`` file; a small ``.chunks`` file records which chunks are good. Chunks are retained on
the broker, so an agent that restarts subscribes again and skips the chunks it already has.
Memory stays at one chunk whatever the package size.

Chunks arrive on the MQTT network thread while the run thread may give the download up (disk
full, a stall): ``accept`` and ``discard`` hold one lock, and a discarded download takes no more
chunks, so a late chunk cannot bring back a ``.chunks`` index that lists chunks the next attempt's
fresh ``.part`` file does not have.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from edgefleet.agent.errors import IntegrityError
from edgefleet.agent.faults import crash_point
from edgefleet.agent.messages import PackageRef
from edgefleet.agent.package import file_sha256


class ChunkedDownload:
    def __init__(self, directory: Path, ref: PackageRef) -> None:
        self.ref = ref
        directory.mkdir(parents=True, exist_ok=True)
        self.part = directory / f"{ref.sha256}.part"
        self.index = directory / f"{ref.sha256}.chunks"
        self.done_path = directory / f"{ref.sha256}.efpkg"
        expected = -(-ref.size // ref.chunk_size)
        if expected != ref.chunk_count():
            raise IntegrityError(
                f"deployment says {ref.size} bytes in chunks of {ref.chunk_size} but lists {ref.chunk_count()} chunk hashes"
            )
        self._lock = threading.Lock()
        self._discarded = False
        if self.part.exists():
            self.have: set[int] = self._load_index()
        else:
            # An index without its .part (a crash between discard's two unlinks) lists chunks that are not here.
            self.index.unlink(missing_ok=True)
            self.have = set()
            with open(self.part, "wb") as f:
                f.truncate(ref.size)

    def accept(self, index: int, data: bytes) -> bool:
        """Write chunk ``index`` if it is new and its hash is right; returns whether it was taken
        (never after ``discard``)."""
        with self._lock:
            if self._discarded or index in self.have or not 0 <= index < self.ref.chunk_count():
                return False
            if hashlib.sha256(data).hexdigest() != self.ref.chunk_sha256[index]:
                raise IntegrityError(f"chunk {index} of package {self.ref.id} has the wrong sha256; it will be fetched again")
            expected_len = min(self.ref.chunk_size, self.ref.size - index * self.ref.chunk_size)
            if len(data) != expected_len:
                raise IntegrityError(f"chunk {index} is {len(data)} bytes, expected {expected_len}")
            with open(self.part, "r+b") as f:
                f.seek(index * self.ref.chunk_size)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.have.add(index)
            self._save_index()
            crash_point(f"chunk:{index}")
            return True

    @property
    def complete(self) -> bool:
        return len(self.have) == self.ref.chunk_count()

    @property
    def progress(self) -> float:
        return len(self.have) / self.ref.chunk_count()

    def finish(self) -> Path:
        """Check the whole file's hash and move it into place; returns the package path."""
        digest = file_sha256(self.part)
        if digest != self.ref.sha256:
            self.discard()
            raise IntegrityError(f"package {self.ref.id}: the reassembled file's sha256 does not match the deployment")
        os.replace(self.part, self.done_path)
        self.index.unlink(missing_ok=True)
        return self.done_path

    def discard(self) -> None:
        """Remove the partial download; chunks that arrive afterwards are not taken."""
        with self._lock:
            self._discarded = True
            for p in (self.part, self.index, self.done_path):
                p.unlink(missing_ok=True)
            self.have = set()

    def _load_index(self) -> set[int]:
        try:
            have = json.loads(self.index.read_text())
        except (OSError, ValueError):
            return set()
        return {i for i in have if isinstance(i, int)} if isinstance(have, list) else set()

    def _save_index(self) -> None:
        tmp = self.index.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(self.have)))
        os.replace(tmp, self.index)
