"""WAL checkpoints of a SQLite file on a thread of their own.

A store in WAL mode with ``synchronous=NORMAL`` (the gateway's spend log,
reputation events and key store, the payer's store) writes each row without an fsync: its WAL frames reach the
operating system, which is what survives a crash of the process. The fsyncs
come with *checkpoints*, which SQLite runs inside whichever commit first finds
the log over 1,000 pages -- a write on the event loop that then stalls it for
two device flushes. :class:`BackgroundCheckpoints` turns that automatic
checkpoint off on the writing connection and runs a checkpoint on its own
connection and thread every ``every`` writes, so the writing connection's commits
never sync.

The checkpoint is a ``RESTART`` one: it holds writers back while it copies the log
(about a millisecond for a few hundred writes' pages) and until no reader is still
reading the log, so the next write starts the log again from its beginning,
overwriting it in place. A ``PASSIVE`` checkpoint, which never waits, never finds
the log fully copied while writes go on: the log of a store written without pause
(a busy node's ledger) then grew by every page written since the store opened, and
each sync of it appended instead of overwriting, which costs the disk two or three
times as much. The wait is bounded (:data:`CHECKPOINT_WAIT_S`): a reader that keeps
the log (another process holding a read open) makes the checkpoint give up
restarting after that time and copy what it can, as ``PASSIVE`` would, and writers
wait at most that long.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Final

__all__ = ["CHECKPOINT_EVERY", "CHECKPOINT_WAIT_S", "BackgroundCheckpoints"]

logger = logging.getLogger(__name__)

CHECKPOINT_EVERY: Final = 500  # writes between checkpoints (SQLite's own: 1,000 pages)
CHECKPOINT_WAIT_S: Final = 0.05  # the longest a checkpoint waits for a writer or a reader


class BackgroundCheckpoints:
    """Checkpoints ``path``'s WAL off the writer's thread, every ``every`` writes."""

    def __init__(self, path: Path, db: sqlite3.Connection, *, every: int = CHECKPOINT_EVERY,
                 name: str = "agoranet-checkpoints") -> None:
        if every < 1:
            raise ValueError("checkpoints need a positive number of writes between them")
        db.execute("PRAGMA wal_autocheckpoint=0")  # the writer's commits never checkpoint
        self.path = path
        self.every = every
        self.checkpoints = 0  # done so far
        self._name = name
        self._writes = 0
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def wrote(self, count: int = 1) -> None:
        """``count`` writes were committed: a checkpoint is started every ``every``."""
        with self._lock:
            self._writes += count
            if self._writes < self.every or self._stopping:
                return
            self._writes = 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                             timeout=CHECKPOINT_WAIT_S)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # the next one tries again; the log just grows
                    logger.warning("checkpoint of %s failed: %s", self.path, exc)
        finally:
            db.close()

    def close(self) -> None:
        """Stop the thread (the writer's own close checkpoints what is left)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()
