"""The on-disk outbox: telemetry and events wait here until the broker has acknowledged them.

paho-mqtt keeps unsent QoS 1 messages in memory only, so a broker outage followed by an agent
restart (or a power cut) would lose them. Every report therefore goes into a small SQLite queue
first (the standard library's sqlite3: transactional, crash-safe, nothing to install) and leaves
it only when its PUBACK arrives. Delivery is in order and at least once: a message sent but not
acknowledged before a disconnect is sent again, and the fleet side stores duplicates once.

The queue is bounded: when it is full the oldest messages are dropped, and the number dropped is
kept on disk and reported, so a gap in the telemetry is always visible as a count.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pending:
    id: int
    topic: str
    payload: bytes


class Outbox:
    def __init__(self, path: Path, *, max_messages: int = 10_000) -> None:
        if max_messages < 1:
            raise ValueError("the outbox must hold at least one message")
        self.max_messages = max_messages
        self._unsaved_drops = 0  # messages refused while the disk was full
        self._lock = threading.Lock()  # the run thread adds, the network thread sends and acknowledges
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a report the agent accepted survives a power cut
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "topic TEXT NOT NULL, payload BLOB NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO counters VALUES ('dropped', 0)")

    def put(self, topic: str, payload: bytes) -> bool:
        """Queue a message; if the outbox is full, drop the oldest and count it. False if the disk refused it."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT INTO outbox (topic, payload) VALUES (?, ?)", (topic, payload))
                (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                excess = count - self.max_messages
                if excess > 0:
                    self._db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                                     (excess,))
                    self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (excess,))
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                # A full disk ("database or disk is full") must not stop the agent: the message is not
                # accepted, and counted in memory since the counter on disk cannot be written either.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._unsaved_drops += 1
                log.error("outbox: could not queue a message for %s (%s); counted as dropped", topic, exc)
                return False
            return True

    def oldest(self, limit: int, *, after: int = 0) -> list[Pending]:
        """Up to ``limit`` messages in the order they were queued, with ids greater than ``after``."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (after, limit)).fetchall()
        return [Pending(id=r[0], topic=r[1], payload=bytes(r[2])) for r in rows]

    def acknowledge(self, message_id: int) -> None:
        with self._lock:
            try:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (message_id,))
            except sqlite3.OperationalError as exc:  # a full disk: it stays queued and is sent again later
                log.warning("outbox: could not remove acknowledged message %d (%s)", message_id, exc)

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    @property
    def dropped(self) -> int:
        with self._lock:
            (value,) = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(value) + self._unsaved_drops

    def close(self) -> None:
        with self._lock:
            self._db.close()
