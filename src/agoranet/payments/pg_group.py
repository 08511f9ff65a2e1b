"""The PostgreSQL ledger with group commit (see :mod:`agoranet.payments.group_commit`).

:class:`PgGroupLedger` is :class:`~agoranet.payments.pg_ledger.PgLedger` with one
difference: on a thread that defers its syncs, a write that would commit with
``synchronous_commit=on`` commits with ``off`` (committed, its row locks
released, visible to every replica; its WAL record not flushed yet) and owes a
sync. :meth:`PgGroupLedger.sync` then commits one transaction with
``synchronous_commit=on`` that takes a transaction id (so it writes a commit
record): the server returns once the WAL is flushed up to that record, and so
past every commit before it on any connection -- one flush for the group.
Channel-level locking is untouched: every write still locks its channel's row
in its own transaction, across replicas.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from agoranet.payments.group_commit import Deferral
from agoranet.payments.pg_ledger import DEFAULT_LEASE_S, Cursor, PgLedger

__all__ = ["PgGroupLedger"]


class PgGroupLedger(PgLedger):
    """:class:`PgLedger` whose fsync'd writes a writer thread can sync as a group."""

    def __init__(self, url: str, *, lease_s: float = DEFAULT_LEASE_S,
                 connect_timeout: float = 5.0) -> None:
        self.deferral = Deferral()
        super().__init__(url, lease_s=lease_s, connect_timeout=connect_timeout)

    @contextmanager
    def _write(self, *, fsync: bool = True) -> Iterator[Cursor]:
        deferred = self.deferral.defers(fsync)
        with super()._write(fsync=fsync and not deferred) as cur:
            yield cur
        if deferred:  # committed: the group's sync flushes its WAL record
            self.deferral.owe()

    def sync(self) -> None:
        with super()._write(fsync=True) as cur:
            cur.execute(b"SELECT txid_current()")
