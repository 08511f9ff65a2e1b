"""Fine-tuning files, jobs and job events in one SQLite file in the node's tuning store.

The store is a sibling of the node's money ledger, not a part of it: the
ledger keeps vouchers, holds and receipts (what was paid), this keeps what
was asked for and what became of it. A job links the two through its payment
record (the x402 request id of its hold). Records are JSON documents, one row
per file and per job, and job events an append-only table, so a job's status
can be rewritten without touching its history. Writing a job is fsync'd
(``synchronous=FULL``) -- a job the buyer was told about survives a power
loss -- while events use ``synchronous=NORMAL`` (durable against a crash of
the process). Calls are short and synchronous; a lock serialises them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from agoranet.errors import TuningError

__all__ = ["JobStore"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS files (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    doc        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    doc        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL REFERENCES jobs(id),
    doc        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events(job_id, seq);
"""

Record = dict[str, Any]


class JobStore:
    """Files, jobs and events of one node's fine-tuning, in ``path`` (or ``:memory:``)."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None,
                                       check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise TuningError(f"cannot open the fine-tuning store {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._fsync = True

    @contextmanager
    def _write(self, *, fsync: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                if fsync != self._fsync:
                    self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
                    self._fsync = fsync
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise TuningError(f"the fine-tuning store is unavailable: {exc}") from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise TuningError(f"the fine-tuning store failed to commit: {exc}") from exc

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise TuningError(f"reading the fine-tuning store failed: {exc}") from exc

    # ------------------------------------------------------------ files

    def put_file(self, record: Record) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                       (record["id"], record["owner"], record["created_at"], json.dumps(record)))

    def files(self) -> list[Record]:
        return [json.loads(r[0]) for r in self._read("SELECT doc FROM files ORDER BY created_at")]

    # ------------------------------------------------------------ jobs

    def put_job(self, record: Record) -> None:
        """Insert or rewrite a job (fsync'd before this returns)."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
                       (record["id"], record["owner"], record["created_at"], json.dumps(record)))

    def jobs(self) -> list[Record]:
        return [json.loads(r[0]) for r in self._read("SELECT doc FROM jobs ORDER BY created_at")]

    # ------------------------------------------------------------ events

    def add_event(self, job_id: str, record: Record) -> None:
        with self._write(fsync=False) as db:
            db.execute("INSERT INTO events (job_id, doc) VALUES (?, ?)",
                       (job_id, json.dumps(record)))

    def events(self, job_id: str) -> list[Record]:
        rows = self._read("SELECT doc FROM events WHERE job_id = ? ORDER BY seq", (job_id,))
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
