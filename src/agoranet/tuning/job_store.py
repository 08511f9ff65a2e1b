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
from pathlib import Path
from typing import Any, Final

from agoranet.errors import TuningError
from agoranet.sqlite_store import SqliteStore

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


class JobStore(SqliteStore):
    """Files, jobs and events of one node's fine-tuning, in ``path`` (or ``:memory:``)."""

    _store_name = "the fine-tuning store"
    _error = TuningError

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
        self._start_transactions()

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

