"""A PostgreSQL group ledger keeps what it is given and the session its deferred writes want
(payments/accept/pg_group.py), checked without reading WAL positions (so also under the mutation
run's server, which does not fsync; test_pg_group_sync_session.py reads them):

- the replica's lease length and connect time limit are the ones asked for (5 s by
  default, as for the plain ledger);
- after a deferred voucher and the group's sync the request session is still at
  ``synchronous_commit = off``, and the ledger knows it (the next deferred write sends
  no SET): the sync's synchronous commit is its own transaction's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account

from agoranet.payments.receipts import ReceiptSigner

from .ledgers import fresh_database

pytestmark = pytest.mark.timeout(60)
CID = "0x" + "23" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


@pytest.fixture
def book(pg_server: str) -> Iterator[Any]:
    from agoranet.payments.accept.pg_group import PgGroupLedger

    ledger = PgGroupLedger(fresh_database(pg_server), lease_s=7.5)
    yield ledger
    ledger.close()


def test_the_lease_and_connect_limit_are_the_ones_asked_for(book: Any, pg_server: str) -> None:
    from agoranet.payments.accept.pg_group import PgGroupLedger

    assert book.lease_s == 7.5
    assert book._timeout == 5  # the default, in whole seconds
    other = PgGroupLedger(fresh_database(pg_server), connect_timeout=2.6)
    try:
        assert other._timeout == 3
    finally:
        other.close()


def test_the_group_sync_leaves_the_session_unsynchronous(book: Any) -> None:
    book.ensure_channel(CID, "{}", SIGNER.address, 0)
    with book.deferral.deferring():
        hold = book.accept_voucher("r1", CID, 1000, "0x", 1000)
        assert book.deferral.take_owed()
    book.sync()
    with book._lock:
        session = str(book._conn.execute("SHOW synchronous_commit").fetchone()[0])
    assert session == "off" and book._fsync is False  # as the ledger knows it: no SET due
    assert book.channel(CID).pending_request == hold.request_id
