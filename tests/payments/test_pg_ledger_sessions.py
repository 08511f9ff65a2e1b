"""A PostgreSQL ledger's sessions and lease: a voucher is committed with
``synchronous_commit=on`` and a charge with ``off`` (and a write that failed leaves no
doubt about which is set), a broken session is replaced on the next call, a closed
ledger says so, the lease is renewed while a request streams, and the claimer's look at
what to claim releases a dead replica's hold, charging the receipt the buyer got."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from eth_account import Account

from agoranet.errors import LedgerError
from agoranet.payments.accept.ledger import VoucherRefused
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import Ledgers, fresh_database

CID = "0x" + "11" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


@pytest.fixture
def pg(pg_server: str) -> Any:
    maker = Ledgers("postgresql", fresh_database(pg_server))
    yield maker
    maker.close()


def _sync(book: Any) -> str:
    """The request session's synchronous_commit."""
    with book._lock:
        return str(book._conn.execute("SHOW synchronous_commit").fetchone()[0])


def _end_session(pg: Ledgers, conn: Any) -> None:
    """The server ends ``conn``'s session (a restart, a network cut, an admin)."""
    with psycopg.connect(pg.where, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))


def test_a_lease_must_be_positive() -> None:
    from agoranet.payments.accept.pg_ledger import PgLedger

    with pytest.raises(LedgerError, match=r"^the ledger lease must be positive, not 0$"):
        PgLedger("postgresql://127.0.0.1:9/ledger", lease_s=0)


def test_vouchers_commit_synchronously_charges_do_not(pg: Ledgers) -> None:
    book = pg.open()
    book.ensure_channel(CID, "{}", "0xp", 0)
    hold = book.accept_voucher("r1", CID, 100, "0xs1", 100)
    assert _sync(book) == "on"
    book.progress(hold, 1, 2, 3, SIGNER.sign, 1)
    assert _sync(book) == "off"
    book.commit(hold, 1, 4, 5, SIGNER.sign, 1)
    assert _sync(book) == "off"
    with pytest.raises(LedgerError, match="does not fit"):  # a write that failed (rolled back)
        book.record_claim({CID: 6}, "0xtx", 1)
    assert _sync(book) == "off"  # its SET went with it
    book.accept_voucher("r2", CID, 105, "0xs2", 100)
    assert _sync(book) == "on"  # so the next voucher sets it again: fsync'd all the same


def test_a_broken_session_is_replaced_on_the_next_call(pg: Ledgers) -> None:
    book = pg.open()
    book.ensure_channel(CID, "{}", "0xp", 0)
    book.commit(book.accept_voucher("r1", CID, 100, "0xs1", 100), 1, 1, 10, SIGNER.sign, 1)
    _end_session(pg, book._conn)
    with pytest.raises(LedgerError, match=r"^ledger read failed: (?!None)\S"):
        book.channel(CID)
    assert book.channel(CID).charged == 10  # a new session
    _end_session(pg, book._conn)
    with pytest.raises(LedgerError, match=r"^ledger is unavailable: (?!None)\S"):
        book.accept_voucher("r2", CID, 110, "0xs2", 100)
    hold = book.accept_voucher("r2", CID, 110, "0xs2", 100)
    assert _sync(book) == "on"
    assert book.commit(hold, 1, 1, 5, SIGNER.sign, 1).cumulative == 15
    assert _sync(book) == "off"


def test_a_closed_ledger_says_so(pg: Ledgers) -> None:
    book = pg.open()
    book.ensure_channel(CID, "{}", "0xp", 0)
    book.close()
    book.close()  # twice: nothing more to do
    with pytest.raises(LedgerError, match=r"^the ledger postgresql://.* is closed$"):
        book.channel(CID)
    assert book.is_claimer() is False and book.unsettled() == 0


def test_the_lease_is_renewed_while_a_request_streams(pg_server: str) -> None:
    """A request that streams for longer than a lease keeps its hold: its replica renews
    the lease (every third of it), so no other replica releases the hold."""
    from agoranet.payments.accept.pg_ledger import PgLedger

    url = fresh_database(pg_server)
    a, b = PgLedger(url, lease_s=2.0), PgLedger(url, lease_s=2.0)
    try:
        a.ensure_channel(CID, "{}", "0xp", 0)
        hold = a.accept_voucher("r1", CID, 100, "0xs1", 100)
        a.progress(hold, 1, 2, 3, SIGNER.sign, 1)
        time.sleep(4.5)  # two leases and more
        assert b.recover() == 0
        with pytest.raises(VoucherRefused) as busy:
            b.accept_voucher("r2", CID, 100, "0xs2", 100)
        assert busy.value.reason == "busy"
        assert a.commit(hold, 1, 4, 5, SIGNER.sign, 1).cumulative == 5
    finally:
        a.close()
        b.close()


def test_the_claimers_look_releases_a_dead_replicas_hold(pg: Ledgers) -> None:
    a, b = pg.open(), pg.open()
    a.ensure_channel(CID, "{}", "0xp", 0)
    assert b.is_claimer() and not a.is_claimer()  # b looked first: b claims
    hold = a.accept_voucher("r1", CID, 100, "0xs1", 100)
    sent = a.progress(hold, 1, 16, 25, SIGNER.sign, 1)
    pg.crash(a)
    [candidate] = b.claim_candidates()  # the hold released, its running receipt charged
    assert (candidate.channel_id, candidate.charged, candidate.unclaimed) == (CID, 25, 25)
    assert b.channel(CID).pending_request is None and b.receipts(CID) == [sent]
    assert b.recover() == 0


def test_the_next_replica_claims_once_the_claimer_has_closed(pg: Ledgers) -> None:
    a, b = pg.open(), pg.open()
    a.ensure_channel(CID, "{}", "0xp", 0)
    a.commit(a.accept_voucher("r1", CID, 100, "0xs1", 100), 1, 1, 10, SIGNER.sign, 1)
    assert [c.unclaimed for c in a.claim_candidates()] == [10]
    assert b.claim_candidates() == [] and not b.is_claimer()
    a.close()
    for _ in range(100):  # the server frees the lock a moment after a's session ended
        if b.is_claimer():
            break
        time.sleep(0.05)
    assert [c.unclaimed for c in b.claim_candidates()] == [10]


def test_a_release_waits_for_the_channel_and_then_finds_the_hold_gone(pg: Ledgers) -> None:
    """Another replica releases this replica's hold (its lease ran out while it was paused)
    while this one releases it too: this one's release waits for the channel's row, then
    finds the hold gone and changes nothing -- it does not charge over the other's work."""
    import threading

    a = pg.open()
    a.ensure_channel(CID, "{}", "0xp", 0)
    hold = a.accept_voucher("r1", CID, 100, "0xs1", 100)
    a.progress(hold, 1, 4, 25, SIGNER.sign, 1)
    with psycopg.connect(pg.where, autocommit=True) as other, \
            psycopg.connect(pg.where, autocommit=True) as watch:
        other.execute("BEGIN")
        other.execute("SELECT 1 FROM channels WHERE channel_id = %s FOR UPDATE", (CID,))
        pid = a._conn.info.backend_pid
        result: list[Any] = []
        releasing = threading.Thread(target=lambda: result.append(a.release(hold)))
        releasing.start()
        for _ in range(200):  # until the release waits on a lock
            row = watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                (pid,)).fetchone()
            if row is not None and row[0] == "Lock":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the release never waited for the channel's row")
        # the other replica: the hold released, nothing charged (say its receipt was lost)
        other.execute("DELETE FROM running_receipts WHERE request_id = 'r1'")
        other.execute("UPDATE vouchers SET status = 'released' WHERE request_id = 'r1'")
        other.execute("UPDATE channels SET pending_request = NULL, voucher_amount = 0, "
                      "voucher_signature = '0x' WHERE channel_id = %s", (CID,))
        other.execute("COMMIT")
        releasing.join(10)
    assert result == [None]
    ch = a.channel(CID)
    assert (ch.charged, ch.pending_request) == (0, None) and a.receipts() == []


def test_the_claimer_says_so_and_a_lost_session_is_a_clear_error(
        pg_server: str, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from agoranet.payments.accept.pg_ledger import PgLedger

    book = PgLedger(fresh_database(pg_server), lease_s=60.0)  # no renewal during the test
    try:
        _end_session_of(book._side, pg_server)
        with pytest.raises(LedgerError, match=r"^ledger is unavailable: (?!None)\S"):
            book.is_claimer()
        caplog.set_level(logging.INFO, logger="agoranet.payments.accept.pg_ledger")
        assert book.is_claimer()  # a new session: it takes the claim lock
        assert [r.getMessage() for r in caplog.records
                if r.name == "agoranet.payments.accept.pg_ledger"] == [
            f"replica {book.replica_name} claims for the ledger {book.path}"]
    finally:
        book.close()


def _end_session_of(conn: Any, admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))


def test_recover_releases_every_dead_replicas_hold_and_counts_them(pg: Ledgers) -> None:
    a, b = pg.open(), pg.open()
    other = "0x" + "12" * 32
    for cid, request in ((CID, "r1"), (other, "r2")):
        a.ensure_channel(cid, "{}", "0xp", 0)
        a.accept_voucher(request, cid, 100, "0xs", 100)
    pg.crash(a)
    assert b.recover() == 2
    assert b.channel(CID).pending_request is None and b.channel(other).pending_request is None


def test_a_stale_hold_released_meanwhile_by_another_is_left_alone(pg: Ledgers) -> None:
    """Two replicas release the same dead replica's hold at once: the one that waited for
    the channel's row finds it released and changes nothing."""
    import threading

    a, b = pg.open(), pg.open()
    a.ensure_channel(CID, "{}", "0xp", 0)
    hold = a.accept_voucher("r1", CID, 100, "0xs1", 100)
    a.progress(hold, 1, 4, 25, SIGNER.sign, 1)
    pg.crash(a)
    with psycopg.connect(pg.where, autocommit=True) as other, \
            psycopg.connect(pg.where, autocommit=True) as watch:
        other.execute("BEGIN")
        other.execute("SELECT 1 FROM channels WHERE channel_id = %s FOR UPDATE", (CID,))
        b.channel(CID)  # b's session is open: its backend can be watched
        pid = b._conn.info.backend_pid
        result: list[Any] = []
        recovering = threading.Thread(target=lambda: result.append(b.recover()))
        recovering.start()
        for _ in range(200):  # until b waits on a lock
            row = watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                (pid,)).fetchone()
            if row is not None and row[0] == "Lock":
                break
            time.sleep(0.05)
        else:
            pytest.fail("recover never waited for the channel's row")
        other.execute("DELETE FROM running_receipts WHERE request_id = 'r1'")
        other.execute("UPDATE vouchers SET status = 'released' WHERE request_id = 'r1'")
        other.execute("UPDATE channels SET pending_request = NULL, voucher_amount = 0, "
                      "voucher_signature = '0x' WHERE channel_id = %s", (CID,))
        other.execute("COMMIT")
        recovering.join(10)
    assert result == [0]
    ch = b.channel(CID)
    assert (ch.charged, ch.pending_request) == (0, None) and b.receipts() == []


def test_a_closed_ledger_leaves_no_session_on_the_server(pg: Ledgers) -> None:
    book = pg.open()
    book.ensure_channel(CID, "{}", "0xp", 0)
    assert book.is_claimer()

    def sessions() -> int:
        with psycopg.connect(pg.where, autocommit=True) as admin:
            row = admin.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE "
                                "application_name = %s",
                                (f"agoranet-node {book.replica_name}",)).fetchone()
        return int(row[0])

    assert sessions() == 2  # requests, and the lease (with the claim lock)
    book.close()
    for _ in range(100):  # the server ends a session a moment after its client left
        if sessions() == 0:
            break
        time.sleep(0.05)
    assert sessions() == 0


def test_a_lease_that_cannot_be_given_up_is_logged(
        pg_server: str, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from agoranet.payments.accept.pg_ledger import PgLedger

    book = PgLedger(fresh_database(pg_server), lease_s=60.0)  # no renewal during the test
    _end_session_of(book._side, pg_server)
    caplog.set_level(logging.WARNING, logger="agoranet.payments.accept.pg_ledger")
    book.close()  # still closes: the lease runs out on its own
    [message] = [r.getMessage() for r in caplog.records
                 if r.name == "agoranet.payments.accept.pg_ledger"]
    assert message.startswith("could not give the ledger lease up: ") and len(message) > 40


def test_a_lease_that_cannot_be_renewed_says_why(pg_server: str) -> None:
    import re

    from agoranet.payments.accept.pg_ledger import PgLedger

    book = PgLedger(fresh_database(pg_server), lease_s=60.0)  # no renewal during the test
    try:
        _end_session_of(book._side, pg_server)
        with pytest.raises(LedgerError, match=rf"^cannot renew the ledger lease on "
                           rf"{re.escape(book.path)}: (?!None)\S"):
            book._renew()
        book._renew()  # a new session
    finally:
        book.close()


def test_a_dead_replicas_hold_released_by_a_voucher_is_logged(
        pg: Ledgers, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    a, b = pg.open(), pg.open()
    a.ensure_channel(CID, "{}", "0xp", 0)
    a.accept_voucher("r1", CID, 100, "0xs1", 100)
    pg.crash(a)
    caplog.set_level(logging.INFO, logger="agoranet.payments.accept.pg_ledger")
    b.accept_voucher("r2", CID, 100, "0xs2", 100)
    assert [r.getMessage() for r in caplog.records
            if r.name == "agoranet.payments.accept.pg_ledger"] == [
        f"released hold r1 on channel {CID}: its replica's lease ran out"]
