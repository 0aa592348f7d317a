"""What the agent remembers about deployments across restarts: ``DATA_DIR/agent-state.json``.

- ``done``: the deployments this device has finished (bounded), so a retained deployment heard
  again at every connection is a no-op;
- ``issued_at``: the newest deployment applied, so an older one arriving late is ignored;
- ``trial``: the model just made current and not yet proven. The agent counts its own starts
  while a trial is open; the trial ends before a clean exit, so each counted start follows a crash,
  and too many of them roll the model back (``Agent._roll_back_after_crashes``).

The file is replaced atomically (write, fsync, rename), so a crash or power cut leaves the old
record or the new one. A missing or unreadable file reads as an empty history: losing it costs a
replayed retained deployment, which installs nothing new, never a wrong model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAX_REMEMBERED_DEPLOYMENTS = 256


@dataclass
class Trial:
    """A model just made current and not yet proven: it has not finished a benchmark without crashing us."""

    deployment_id: str
    package_id: str
    sha256: str
    previous: str | None  # directory name under packages/ of the model it replaced
    starts: int = 0  # agent starts since it became current; the trial ends before a clean exit, so each follows a crash
    # Set once the agent has decided to roll back, before it touches ``current``: a crash during the
    # rollback itself then finishes it at the next start instead of forgetting it.
    rollback: str | None = None


@dataclass
class History:
    done: list[str] = field(default_factory=list)
    issued_at: float = 0.0
    trial: Trial | None = None

    def finish(self, deployment_id: str, issued_at: float | None = None) -> None:
        """Record a finished deployment (and, if given, when it was issued)."""
        self.done = (self.done + [deployment_id])[-MAX_REMEMBERED_DEPLOYMENTS:]
        if issued_at is not None:
            self.issued_at = max(self.issued_at, issued_at)


class HistoryFile:
    """The history on disk; every method reads or writes the whole (small) file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> History:
        try:
            raw = json.loads(self.path.read_text())
            trial = Trial(**raw["trial"]) if raw.get("trial") else None
            return History(done=[str(d) for d in raw["done"]], issued_at=float(raw["issued_at"]), trial=trial)
        except (OSError, ValueError, TypeError, KeyError):
            return History()

    def save(self, history: History) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(asdict(history)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def start_trial(self, trial: Trial) -> None:
        history = self.load()
        history.trial = trial
        self.save(history)

    def end_trial(self) -> None:
        history = self.load()
        if history.trial is not None:
            history.trial = None
            self.save(history)

    def finish(self, deployment_id: str, issued_at: float | None = None) -> None:
        history = self.load()
        history.finish(deployment_id, issued_at)
        self.save(history)
