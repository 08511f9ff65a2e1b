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

A checkpoint copies the log into the database without waiting for anyone
(``PASSIVE``), then tries to *restart* it (``RESTART``, without a busy wait: if a
write or a reader is in the way it gives up at once, and tries again a few times a
millisecond apart): holding writers back only while it copies the few frames
written meanwhile, it leaves the log free to start again from its beginning, so the
next write overwrites it in place. A ``PASSIVE`` checkpoint alone never finds the
log fully copied while writes go on: the log of a store written without pause (a
busy node's ledger) then grew by every page written since the store opened, and
each sync of it appended to the file instead of overwriting it, which costs the
disk two to three times as much. A reader that keeps the log (another process
holding a read open) only keeps it from restarting, as before.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Final

__all__ = ["CHECKPOINT_EVERY", "RESTART_TRIES", "BackgroundCheckpoints"]

logger = logging.getLogger(__name__)

CHECKPOINT_EVERY: Final = 500  # writes between checkpoints (SQLite's own: 1,000 pages)
RESTART_TRIES: Final = 5  # tries to restart the log after each checkpoint, 1 ms apart


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
        self.restarts = 0  # checkpoints that left the log to start again from its beginning
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
        # No busy wait: a restart that meets a writer or a reader gives up at once.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                             timeout=0)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                    for _ in range(RESTART_TRIES):
                        busy = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
                        if not busy:
                            self.restarts += 1
                            break
                        time.sleep(0.001)
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
