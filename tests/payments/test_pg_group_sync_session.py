"""A PostgreSQL group sync leaves the request session as the deferred writes want it
(payments/accept/pg_group.py): the group's one synchronous commit is set for its own transaction
only (``SET LOCAL``), so a lone paid request -- voucher deferred, group sync, charge --
switches ``synchronous_commit`` no more (two round trips fewer per request), and the WAL
is flushed past every write committed before the sync once it returns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from eth_account import Account

from agoranet.payments.receipts import ReceiptSigner

from .ledgers import LEASE_S, fresh_database

pytestmark = pytest.mark.timeout(60)
CID = "0x" + "21" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


@pytest.fixture
def book(pg_server: str) -> Iterator[Any]:
    from agoranet.payments.accept.pg_group import PgGroupLedger

    url = fresh_database(pg_server)
    ledger = PgGroupLedger(url, lease_s=LEASE_S)
    ledger.url = url  # the test's own sessions read the WAL positions there
    yield ledger
    ledger.close()


def _session(book: Any) -> str:
    with book._lock:
        return str(book._conn.execute("SHOW synchronous_commit").fetchone()[0])


def _lsn(url: str, what: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f"SELECT {what} - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def test_a_lone_request_never_switches_the_session(book: Any) -> None:
    book.ensure_channel(CID, "{}", "0xp", 0)
    charged = 0
    for n in range(3):
        with book.deferral.deferring():
            hold = book.accept_voucher(f"r{n}", CID, charged + 100, "0xs", 100)
            assert book.deferral.take_owed()
        assert _session(book) == "off"
        written = _lsn(book.url, "pg_current_wal_insert_lsn()")
        book.sync()
        assert _lsn(book.url, "pg_current_wal_flush_lsn()") >= written
        assert _session(book) == "off"  # the sync's synchronous commit was its own
        charged = book.commit(hold, 1, 1, 10, SIGNER.sign, 1).cumulative
        assert _session(book) == "off"
    assert charged == 30


def test_a_sync_after_a_synchronous_write_still_syncs(book: Any) -> None:
    """The session may be on (a write that synced by itself, the settlement loop's): the
    sync still commits synchronously and leaves it off for the next deferred write."""
    book.ensure_channel(CID, "{}", "0xp", 0)  # not deferred: commits with on
    assert _session(book) == "on"
    written = _lsn(book.url, "pg_current_wal_insert_lsn()")
    book.sync()
    assert _lsn(book.url, "pg_current_wal_flush_lsn()") >= written
    assert _session(book) == "off"
