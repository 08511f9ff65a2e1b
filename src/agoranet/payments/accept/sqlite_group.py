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

:meth:`SqliteGroupLedger.sync_started` is the same sync for the event loop: its
flushes are asked of the kernel (:class:`~agoranet.file_sync.FileSyncs`), so the
first one has started when the call returns, with no thread to wake.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Awaitable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

from agoranet.errors import LedgerError
from agoranet.file_sync import FileSyncs
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
        steps = self._flushes()
        try:
            fd, data_only = next(steps)
            while True:
                try:
                    (os.fdatasync if data_only else os.fsync)(fd)
                except OSError as exc:
                    fd, data_only = steps.throw(exc)
                else:
                    fd, data_only = steps.send(None)
        except StopIteration:
            return

    def sync_started(self, syncs: FileSyncs) -> Awaitable[None]:
        """:meth:`sync` from the event loop: the log's flush is asked of the kernel before
        this returns (:meth:`~agoranet.file_sync.FileSyncs.flush`), the rest is awaited
        (LedgerError if it fails)."""
        steps = self._flushes()
        try:
            first = syncs.flush(*next(steps))
        except StopIteration:
            return _nothing()
        except (LedgerError, OSError) as exc:  # (OSError: the syncs were closed)
            steps.close()
            return _raise(exc)
        return _flush_rest(steps, first, syncs)

    def _flushes(self) -> Generator[tuple[int, bool], None, None]:
        """The flushes :meth:`sync` makes, as ``(fd, data only)``: each is made (or raises
        OSError into this) before the next is asked for."""
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
            yield fd, True
            identity = os.fstat(fd)
            if (identity.st_dev, identity.st_ino) != self._synced_log:
                if hasattr(os, "O_DIRECTORY"):  # the new log file's name, durable (POSIX)
                    folder = os.open(log.parent, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        yield folder, False
                    finally:
                        os.close(folder)
                self._synced_log = (identity.st_dev, identity.st_ino)
        except OSError as exc:
            raise LedgerError(f"cannot sync the ledger's log {log}: {exc}") from exc
        finally:
            os.close(fd)


async def _flush_rest(steps: Generator[tuple[int, bool], None, None],
                      pending: Awaitable[None], syncs: FileSyncs) -> None:
    while True:
        try:
            try:
                await pending
            except OSError as exc:
                request = steps.throw(exc)
            else:
                request = steps.send(None)
        except StopIteration:
            return
        pending = syncs.flush(*request)


async def _nothing() -> None:
    return None


async def _raise(exc: BaseException) -> None:
    raise exc
