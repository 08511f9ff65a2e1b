"""The PostgreSQL ledger with group commit (see :mod:`agoranet.payments.accept.group_commit`).

:class:`PgGroupLedger` is :class:`~agoranet.payments.accept.pg_ledger.PgLedger` with one
difference: on a thread that defers its syncs, a write that would commit with
``synchronous_commit=on`` commits with ``off`` (committed, its row locks
released, visible to every replica; its WAL record not flushed yet) and owes a
sync. :meth:`PgGroupLedger.sync` then commits one transaction with
``synchronous_commit=on`` that writes WAL (it rewrites the replica's lease row
as it is: a transaction that only takes an id commits asynchronously whatever
the setting): the server returns once the WAL is flushed up to its commit
record, and so past every commit before it on any connection -- one flush for
the group.
Channel-level locking is untouched: every write still locks its channel's row
in its own transaction, across replicas.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from psycopg import sql

from agoranet.payments.accept.group_commit import Deferral
from agoranet.payments.accept.pg_ledger import DEFAULT_LEASE_S, Cursor, PgLedger

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
        # A commit waits for the WAL flush only if its transaction wrote WAL: an xid alone
        # (txid_current()) commits asynchronously even with synchronous_commit=on. So the
        # sync rewrites this replica's lease row as it is (its expiry unchanged; a row
        # missing is written expired, as a missing one already counts), and commits that
        # with on: its commit record is flushed, and with it every commit before it.
        # SET LOCAL, in the same round trip: the session stays at off, as the deferred
        # writes and the charges around it want it, with no SET back and forth per group.
        with super()._write(fsync=False) as cur:
            cur.execute(sql.SQL(
                "SET LOCAL synchronous_commit TO on; "
                "INSERT INTO replicas (replica_id, name, expires_at) VALUES ({}, {}, 0) "
                "ON CONFLICT (replica_id) DO UPDATE SET expires_at = replicas.expires_at"
            ).format(sql.Literal(self.replica_id), sql.Literal(self.replica_name)))
