"""A PostgreSQL ledger's sessions as the server sees them, and its lease thread: each
session names its replica, gives up connecting after ``connect_timeout`` (whole seconds,
at least one), a release and a charge on a fresh session are not fsync'd, a known
channel is only read; the heartbeat is a named daemon thread that says, when the server
refuses it, how long the replica's holds last without it; a database the ledger cannot
set up, or a server it cannot reach, is a clear error with the server's reason."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
import pytest
from eth_account import Account

from agoranet.errors import LedgerError
from agoranet.payments.accept.ledger_url import redact_url
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import fresh_database

CID = "0x" + "13" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


def _open(url: str, **kwargs: Any) -> Any:
    from agoranet.payments.accept.pg_ledger import PgLedger

    return PgLedger(url, **kwargs)


def _show(book: Any, setting: str) -> str:
    """A setting of ``book``'s request session."""
    with book._lock:
        return str(book._conn.execute(f"SHOW {setting}".encode()).fetchone()[0])


def _dbname(url: str) -> str:
    return url.partition("?")[0].rsplit("/", 1)[1]


def test_a_session_names_its_replica_and_bounds_its_waits(pg_server: str) -> None:
    url = fresh_database(pg_server)
    book = _open(url, lease_s=60.0)
    short = _open(url, lease_s=0.5, connect_timeout=0.4)  # a lease under a second is fine
    try:
        for conn in (book._conn, book._side):
            params = conn.info.get_parameters()
            assert params["connect_timeout"] == "5"  # the default: 5 s
            assert params["application_name"] == f"agoranet-node {book.replica_name}"
        assert short._conn.info.get_parameters()["connect_timeout"] == "1"  # at least 1 s
        assert short.lease_s == 0.5
        assert _show(book, "idle_in_transaction_session_timeout") == "30s"
        assert _show(book, "lock_timeout") == "10s"
    finally:
        book.close()
        short.close()


def test_a_release_is_not_fsyncd(pg_server: str) -> None:
    """A release moves no money: it does not wait for the WAL flush, as a voucher does."""
    book = _open(fresh_database(pg_server), lease_s=60.0)
    try:
        book.ensure_channel(CID, "{}", "0xp", 0)
        hold = book.accept_voucher("r1", CID, 100, "0xs1", 100)
        assert _show(book, "synchronous_commit") == "on"
        assert book.release(hold) is None
        assert _show(book, "synchronous_commit") == "off"
        assert book.channel(CID).pending_request is None
    finally:
        book.close()


def test_a_charge_on_a_fresh_session_is_not_fsyncd(pg_server: str) -> None:
    """Another replica (a new session: synchronous_commit at the server's default, on)
    charges a hold: it sets the session's synchronous_commit off all the same."""
    url = fresh_database(pg_server)
    a, b = _open(url, lease_s=60.0), _open(url, lease_s=60.0)
    try:
        a.ensure_channel(CID, "{}", "0xp", 0)
        hold = a.accept_voucher("r1", CID, 100, "0xs1", 100)
        assert _show(b, "synchronous_commit") == "on"
        assert b.commit(hold, 1, 2, 30, SIGNER.sign, 1).cumulative == 30
        assert _show(b, "synchronous_commit") == "off"
        ch = a.channel(CID)
        assert (ch.charged, ch.voucher_amount, ch.claimed) == (30, 100, 0)
        assert ch.claimed <= ch.charged <= ch.voucher_amount
    finally:
        a.close()
        b.close()


def test_a_known_channel_is_only_read(pg_server: str) -> None:
    """ensure_channel of a channel the ledger has writes nothing (no WAL flush per request):
    it works on a session that may not write."""
    book = _open(fresh_database(pg_server), lease_s=60.0)
    try:
        first = book.ensure_channel(CID, "{}", "0xp", 7)
        with book._lock:
            book._conn.execute("SET default_transaction_read_only = on")
        assert book.ensure_channel(CID.upper().replace("0X", "0x"), "{}", "0xp", 9) == first
        assert first.charged == first.voucher_amount == 7 and first.claimed == 7
        with pytest.raises(LedgerError, match="read-only transaction"):  # it may not write
            book.ensure_channel("0x" + "14" * 32, "{}", "0xp", 0)
    finally:
        book.close()


def test_the_heartbeat_is_a_named_daemon_thread(pg_server: str) -> None:
    """A process that forgets to close its ledger still exits (a daemon thread), and a
    thread dump names the lease's heartbeat."""
    book = _open(fresh_database(pg_server), lease_s=60.0)
    try:
        assert book._heartbeat.name == "agoranet-ledger-lease"
        assert book._heartbeat.daemon is True and book._heartbeat.is_alive()
        assert book._heartbeat in threading.enumerate()
    finally:
        book.close()


def test_a_refused_renewal_says_how_long_the_holds_last(
        pg_server: str, caplog: pytest.LogCaptureFixture) -> None:
    """The server stops taking the replica's sessions: its heartbeat logs why it could not
    renew the lease, and when this replica's holds expire without it."""
    url = fresh_database(pg_server)
    name = _dbname(url)
    caplog.set_level(logging.WARNING, logger="agoranet.payments.accept.pg_ledger")
    book = _open(url, lease_s=1.2)  # renewed every 0.4 s
    try:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false".encode())
            admin.execute("SELECT pg_terminate_backend(%s)", (book._side.info.backend_pid,))
        refused = f"cannot reach the PostgreSQL ledger {book.path}: "
        messages: list[str] = []
        for _ in range(200):  # bounded: a renewal is due every 0.4 s
            messages = [r.getMessage() for r in caplog.records
                        if r.name == "agoranet.payments.accept.pg_ledger"
                        and r.levelno == logging.WARNING]
            if any(m.startswith(refused) for m in messages):
                break
            time.sleep(0.05)
        # the first may be the renewal on the session the server ended; then it reconnects
        [message] = [m for m in messages if m.startswith(refused)][:1]
        assert f'database "{name}" is not currently accepting connections' in message
        assert all(m.endswith(" (holds of this replica expire in 1 s without it)")
                   for m in messages)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true".encode())
        book.close()


def test_a_database_the_ledger_cannot_set_up_is_a_clear_error(pg_server: str) -> None:
    """A database whose ``channels`` table is something else's: the ledger names the
    database and the server's reason."""
    url = fresh_database(pg_server)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE channels (other INTEGER)")
    with pytest.raises(LedgerError) as info:
        _open(url, lease_s=60.0)
    message = str(info.value)
    assert message.startswith(f"cannot set up the ledger {redact_url(url)}: ")
    assert 'column "channel_id" referenced in foreign key constraint does not exist' in message


def test_an_unreachable_server_gives_its_reason_on_one_line() -> None:
    url = "postgresql://agoranet@127.0.0.1:9/ledger"  # port 9: nothing listens
    with pytest.raises(psycopg.OperationalError) as direct:
        psycopg.connect(url, connect_timeout=2)
    reason = " ".join(str(direct.value).split())
    assert "Connection refused" in reason
    with pytest.raises(LedgerError) as info:
        _open(url, connect_timeout=2)
    assert str(info.value) == f"cannot reach the PostgreSQL ledger {url}: {reason}"


def test_a_dead_replicas_hold_released_by_recover_is_logged(
        pg_server: str, caplog: pytest.LogCaptureFixture) -> None:
    """recover() (a node's start, the claimer's look) names each hold it releases, and its
    channel, so an operator can match it to the request that was cut short."""
    url = fresh_database(pg_server)
    a, b = _open(url, lease_s=60.0), _open(url, lease_s=60.0)
    try:
        a.ensure_channel(CID, "{}", "0xp", 0)
        a.accept_voucher("r1", CID, 100, "0xs1", 100)
        a.close()  # gives its lease up: its hold is a dead replica's
        caplog.set_level(logging.INFO, logger="agoranet.payments.accept.pg_ledger")
        assert b.recover() == 1
        assert [r.getMessage() for r in caplog.records
                if r.name == "agoranet.payments.accept.pg_ledger"] == [
            f"released hold r1 on channel {CID}: its replica's lease ran out"]
        ch = b.channel(CID)
        assert ch.pending_request is None and ch.charged == 0 and ch.claimed == 0
    finally:
        b.close()
