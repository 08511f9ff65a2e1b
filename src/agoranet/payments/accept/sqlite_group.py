"""The SQLite ledger with group commit (see :mod:`agoranet.payments.accept.group_commit`).

:class:`SqliteGroupLedger` is :class:`~agoranet.payments.accept.sqlite_ledger.SqliteLedger`
with one difference: on a thread that defers its syncs, a write that would
commit with ``synchronous=FULL`` commits with ``NORMAL`` instead (its WAL frames
written, not yet flushed) and owes a sync; :meth:`SqliteGroupLedger.sync` then
flushes the write-ahead log once (``fdatasync``) for every such write. That is
what ``FULL`` does per commit: in WAL mode a commit is durable once its frames
are on disk. A frame a checkpoint already moved to the database file is durable
too (in ``NORMAL`` a checkpoint syncs the log first and the database after), so
a log that a checkpoint removed owes nothing. The log's folder is synced once
per log file, as SQLite does when it creates one.

Its checkpoints (the only other syncs: SQLite runs one inside the commit that
finds the log over 1,000 pages) run on a thread of their own
(:class:`~agoranet.sqlite_checkpoints.BackgroundCheckpoints`), so a commit that
syncs nothing -- a charge, a running receipt -- never waits for the disk.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agoranet.errors import LedgerError
from agoranet.payments.accept.group_commit import Deferral
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.sqlite_checkpoints import BackgroundCheckpoints

__all__ = ["SqliteGroupLedger"]


class SqliteGroupLedger(SqliteLedger):
    """:class:`SqliteLedger` whose fsync'd writes a writer thread can sync as a group."""

    def __init__(self, path: Path | str) -> None:
        self.deferral = Deferral()
        self._synced_log: tuple[int, int] | None = None  # (device, inode) of the log synced
        self._checkpoints: BackgroundCheckpoints | None = None
        super().__init__(path)
        self._checkpoints = None if str(path) == ":memory:" else BackgroundCheckpoints(
            Path(path), self._db, name="agoranet-ledger-checkpoints")

    @contextmanager
    def _write(self, *, fsync: bool = True) -> Iterator[sqlite3.Connection]:
        deferred = self.deferral.defers(fsync)
        with super()._write(fsync=fsync and not deferred) as db:
            yield db
        if deferred:  # committed: its frames are written, the group's sync makes them durable
            self.deferral.owe()
        if self._checkpoints is not None:
            self._checkpoints.wrote()

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.close()
        super().close()

    def sync(self) -> None:
        if str(self.path) == ":memory:":
            return
        log = Path(f"{self.path}-wal")
        try:
            fd = os.open(log, os.O_RDONLY)
        except FileNotFoundError:  # checkpointed into the (synced) database and removed
            return
        except OSError as exc:
            raise LedgerError(f"cannot sync the ledger's log {log}: {exc}") from exc
        try:
            os.fdatasync(fd)
            identity = os.fstat(fd)
            if (identity.st_dev, identity.st_ino) != self._synced_log:
                _sync_folder(log.parent)
                self._synced_log = (identity.st_dev, identity.st_ino)
        except OSError as exc:
            raise LedgerError(f"cannot sync the ledger's log {log}: {exc}") from exc
        finally:
            os.close(fd)


def _sync_folder(folder: Path) -> None:
    """Make the folder's entries (a new log file's name) durable (POSIX)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
