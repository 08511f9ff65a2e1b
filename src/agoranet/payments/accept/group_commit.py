"""Group commit: many ledger writes, one durable sync.

A ledger that writes an accepted voucher syncs it to disk before the call
returns (SQLite's ``synchronous=FULL``, PostgreSQL's ``synchronous_commit=on``):
one device flush per request. A ledger that supports group commit
(:class:`GroupCommitLedger`) lets one thread -- the
:class:`~agoranet.payments.accept.ledger_writer.LedgerWriter` -- run several writes with
their syncs *deferred* (each is still its own transaction, committed, visible
and safe against a process crash), then make all of them durable with one
:meth:`GroupCommitLedger.sync` before any of their callers is answered. What a
write would have synced is exactly what the group syncs: a write that would
not have synced (a charge, a running receipt) owes nothing.

Deferral is per thread: other threads (the settlement loop, tests) calling the
same ledger sync their own writes as before.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

from agoranet.file_sync import FileSyncs
from agoranet.payments.accept.ledger import Ledger

__all__ = ["Deferral", "FileGroupCommitLedger", "GroupCommitLedger"]


class Deferral:
    """Which thread defers its syncs now, and whether its writes owe one."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """On this thread, until the block ends, durable writes skip their own sync."""
        self._local.active = True
        self._local.owed = False
        try:
            yield
        finally:
            self._local.active = False

    def defers(self, fsync: bool) -> bool:
        """Whether a write that asks for ``fsync`` skips its own sync on this thread."""
        return fsync and bool(getattr(self._local, "active", False))

    def owe(self) -> None:
        """A deferred write committed: the group owes a sync."""
        self._local.owed = True

    def take_owed(self) -> bool:
        """Whether a deferred write committed since the last call (and clear it)."""
        owed = bool(getattr(self._local, "owed", False))
        self._local.owed = False
        return owed


@runtime_checkable
class GroupCommitLedger(Ledger, Protocol):
    """A ledger whose fsync'd writes can be deferred and synced once for a group."""

    deferral: Deferral

    def sync(self) -> None:
        """Make every write committed so far durable (raises LedgerError if it cannot)."""
        ...


@runtime_checkable
class FileGroupCommitLedger(GroupCommitLedger, Protocol):
    """A group-commit ledger in local files, whose sync the event loop starts itself."""

    def sync_started(self, syncs: FileSyncs) -> Awaitable[None]:
        """:meth:`sync`, its first flush started before this returns, the rest awaited."""
        ...
