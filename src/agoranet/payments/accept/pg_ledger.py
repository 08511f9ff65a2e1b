"""The ledger in PostgreSQL, shared by several replicas of one node.

A provider runs several ``agoranet node`` processes (behind one load balancer,
under one key) on one PostgreSQL database: every replica sees every channel,
and "one request per channel at a time" holds across them. Each channel
operation is one transaction that first locks the channel's row
(``SELECT ... FOR UPDATE``), so two replicas can never spend the same headroom;
it is the same protocol and the same rules as
:class:`~agoranet.payments.accept.sqlite_ledger.SqliteLedger` (the shared conformance
suite runs against both).

Holds and replicas. Every replica registers itself with a *lease* (a row in
``replicas``, renewed by a background thread every third of ``lease_s``,
timed on the database's clock) and every hold names the replica that took
it. A hold belongs to its replica while that lease is alive, however long the
request streams. When a replica dies (SIGKILL, a lost host) its lease runs
out and its holds are released by whoever comes next: a voucher offered on
the held channel (the hold is released first, charging its last running
receipt if it sent one, exactly as :meth:`~PgLedger.recover` does after a
restart), or :meth:`~PgLedger.recover`, or the claiming replica's next look
at what to claim. A replica that closes cleanly gives its lease up at once.

Claims. Only one replica claims and settles at a time: the one that holds the
ledger's claim lock (a session-level ``pg_try_advisory_lock`` on the lease
connection). The others see nothing to claim and nothing to settle; when the
claimer dies its connection drops, the lock is free, and the next replica to
look takes it over.

Durability. Accepting a voucher, claims and settlements commit with
``synchronous_commit=on`` (the commit returns once the WAL is flushed), a
charge or a running receipt with ``synchronous_commit=off`` -- the same
trade as the SQLite ledger's ``synchronous=NORMAL``: a charge lost to a
server crash costs the node, never the payer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, cast

import psycopg

from agoranet.errors import LedgerError
from agoranet.payments.accept.ledger import (
    ChannelRecord,
    ClaimCandidate,
    ClaimFailure,
    Earnings,
    Hold,
    VoucherRefused,
    check_amount,
    request_id_in_use,
)
from agoranet.payments.accept.ledger_url import redact_url
from agoranet.payments.receipts import Receipt

__all__ = ["DEFAULT_LEASE_S", "PgLedger"]

logger = logging.getLogger(__name__)

DEFAULT_LEASE_S: Final = 15.0
_CLAIM_LOCK: Final = 0x61676F72_616C6467  # "agoraldg": the claimer's advisory lock
_SCHEMA_LOCK: Final = 0x61676F72_61736368  # "agorasch": creating the tables
_NOW: Final = "EXTRACT(EPOCH FROM clock_timestamp())::float8"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS channels (
    channel_id        TEXT PRIMARY KEY,
    config            TEXT NOT NULL,
    payer             TEXT NOT NULL,
    charged           BIGINT NOT NULL CHECK (charged >= 0),
    voucher_amount    BIGINT NOT NULL CHECK (voucher_amount >= charged),
    voucher_signature TEXT NOT NULL,
    claimed           BIGINT NOT NULL CHECK (claimed >= 0 AND claimed <= charged),
    pending_request   TEXT,
    updated_at        DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS replicas (
    replica_id  TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS vouchers (
    request_id         TEXT PRIMARY KEY,
    channel_id         TEXT NOT NULL REFERENCES channels(channel_id),
    voucher_amount     BIGINT NOT NULL,
    signature          TEXT NOT NULL,
    max_amount         BIGINT NOT NULL,
    charged_before     BIGINT NOT NULL,
    previous_amount    BIGINT NOT NULL,
    previous_signature TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('held', 'charged', 'released')),
    replica            TEXT NOT NULL,
    accepted_at        DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS vouchers_held ON vouchers(status) WHERE status = 'held';
CREATE TABLE IF NOT EXISTS receipts (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY,
    request_id  TEXT PRIMARY KEY,
    channel_id  TEXT NOT NULL,
    tokens_in   BIGINT NOT NULL,
    tokens_out  BIGINT NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount >= 0),
    cumulative  BIGINT NOT NULL,
    chain_id    BIGINT NOT NULL,
    signer      TEXT NOT NULL,
    signature   TEXT NOT NULL,
    claimed     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_unclaimed ON receipts(channel_id, claimed);
CREATE INDEX IF NOT EXISTS receipts_cumulative ON receipts(channel_id, cumulative);
CREATE TABLE IF NOT EXISTS running_receipts (
    request_id  TEXT PRIMARY KEY REFERENCES vouchers(request_id),
    tokens_in   BIGINT NOT NULL,
    tokens_out  BIGINT NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount >= 0),
    cumulative  BIGINT NOT NULL,
    chain_id    BIGINT NOT NULL,
    signer      TEXT NOT NULL,
    signature   TEXT NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS settlements (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    amount      BIGINT NOT NULL,
    tx_hash     TEXT NOT NULL,
    gas_used    BIGINT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id  TEXT NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount >= 0),
    total       BIGINT NOT NULL,
    tx_hash     TEXT NOT NULL,
    gas_used    BIGINT NOT NULL,
    settle_id   BIGINT REFERENCES settlements(id),
    created_at  DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS claim_failures (
    channel_id       TEXT PRIMARY KEY,
    failures         INTEGER NOT NULL,
    last_error       TEXT NOT NULL,
    first_failed_at  DOUBLE PRECISION NOT NULL,
    retry_at         DOUBLE PRECISION NOT NULL
);
"""

_RECEIPT_COLUMNS: Final = ("request_id, channel_id, tokens_in, tokens_out, amount, cumulative, "
                           "chain_id, signer, signature")
_CHANNEL_COLUMNS: Final = ("channel_id, config, payer, charged, voucher_amount, "
                           "voucher_signature, claimed, pending_request")

_CHANNEL_COLUMNS_C: Final = ", ".join(f"c.{c.strip()}" for c in _CHANNEL_COLUMNS.split(","))

Cursor = psycopg.Cursor[tuple[Any, ...]]


class PgLedger:
    """:class:`~agoranet.payments.accept.ledger.Ledger` in a PostgreSQL database at ``url``.

    ``lease_s``: how long this replica's holds outlive it (renewed every third of it).
    LedgerError if the server cannot be reached within ``connect_timeout`` seconds.
    """

    def __init__(self, url: str, *, lease_s: float = DEFAULT_LEASE_S,
                 connect_timeout: float = 5.0) -> None:
        if lease_s <= 0:
            raise LedgerError(f"the ledger lease must be positive, not {lease_s}")
        self.url = url
        self.path = redact_url(url)  # what banners and messages show
        self.lease_s = lease_s
        self.replica_id = uuid.uuid4().hex
        self.replica_name = f"{socket.gethostname()}:{os.getpid()}"
        self._timeout = max(1, round(connect_timeout))
        self._lock = threading.Lock()  # the request connection
        self._side_lock = threading.Lock()  # the lease connection (and the claim lock)
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._side: psycopg.Connection[tuple[Any, ...]] | None = None
        self._claimer = False
        self._fsync: bool | None = True  # the request connection's synchronous_commit
        self._closed = threading.Event()
        with self._lock:
            conn = self._connection(opening=True)
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    conn.execute(_SCHEMA)
            except psycopg.Error as exc:
                conn.close()
                raise LedgerError(f"cannot set up the ledger {self.path}: {exc}") from exc
        try:
            self._renew()
        except LedgerError:
            self.close()
            raise
        self._heartbeat = threading.Thread(target=self._beat, name="agoranet-ledger-lease",
                                           daemon=True)
        self._heartbeat.start()

    # ------------------------------------------------------------ plumbing

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=self._timeout,
                                   application_name=f"agoranet-node {self.replica_name}")
        except psycopg.Error as exc:
            raise LedgerError(f"cannot reach the PostgreSQL ledger {self.path}: "
                              f"{' '.join(str(exc).split())}") from exc

    def _connection(self, *, opening: bool = False) -> psycopg.Connection[tuple[Any, ...]]:
        """The request connection (under ``self._lock``), reconnected if it broke."""
        if self._conn is None or self._conn.closed:
            if self._closed.is_set() and not opening:
                raise LedgerError(f"the ledger {self.path} is closed")
            conn = self._connect()
            try:
                # a replica frozen inside a transaction (SIGSTOP, a stalled host) does not
                # hold a channel's row for ever, nor does a request wait for ever on it
                conn.execute("SET idle_in_transaction_session_timeout = '30s'")
                conn.execute("SET lock_timeout = '10s'")
            except psycopg.Error as exc:
                conn.close()
                raise LedgerError(f"ledger is unavailable: {str(exc).strip()}") from exc
            self._conn = conn
            self._fsync = True  # synchronous_commit=on: the server's default
        return self._conn

    @contextmanager
    def _write(self, *, fsync: bool = True) -> Iterator[Cursor]:
        """One transaction on the request connection; psycopg's errors as LedgerError."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if fsync != self._fsync:  # the session's setting, changed when needed
                        cur.execute(f"SET synchronous_commit TO {'on' if fsync else 'off'}"
                                    .encode())
                        self._fsync = fsync
                    yield cur
            except psycopg.Error as exc:
                self._fsync = None  # a rolled back SET is undone: set it again next time
                self._drop_if_broken(conn)
                raise LedgerError(f"ledger is unavailable: {str(exc).strip()}") from exc
            except BaseException:
                self._fsync = None
                raise

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._connection()
            try:
                return list(conn.execute(sql.encode(), args).fetchall())
            except psycopg.Error as exc:
                self._drop_if_broken(conn)
                raise LedgerError(f"ledger read failed: {str(exc).strip()}") from exc

    def _drop_if_broken(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        if conn.broken or conn.closed:
            conn.close()
            self._conn = None

    @staticmethod
    def _one(cur: Cursor, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        return cur.execute(sql.encode(), args).fetchone()

    @staticmethod
    def _channel_row(cur: Cursor, channel_id: str, *, lock: bool = False) -> ChannelRecord | None:
        row = PgLedger._one(cur, f"SELECT {_CHANNEL_COLUMNS} FROM channels WHERE channel_id = %s"
                            + (" FOR UPDATE" if lock else ""), (channel_id,))
        return ChannelRecord(*row) if row else None

    # ------------------------------------------------------------ the lease

    def _side_connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._side is None or self._side.closed or self._side.broken:
            if self._side is not None:
                self._side.close()
            self._claimer = False  # the lock went with the old session
            self._side = self._connect()
        return self._side

    def _renew(self) -> None:
        """Extend this replica's lease by ``lease_s`` from now (the database's clock)."""
        with self._side_lock:
            if self._closed.is_set():
                return
            try:
                self._side_connection().execute(
                    "INSERT INTO replicas (replica_id, name, expires_at) VALUES "
                    f"(%s, %s, {_NOW} + %s) ON CONFLICT (replica_id) DO UPDATE SET "
                    "expires_at = EXCLUDED.expires_at".encode(),
                    (self.replica_id, self.replica_name, self.lease_s))
            except psycopg.Error as exc:
                if self._side is not None and (self._side.broken or self._side.closed):
                    self._side.close()
                raise LedgerError(f"cannot renew the ledger lease on {self.path}: "
                                  f"{str(exc).strip()}") from exc

    def _beat(self) -> None:
        while not self._closed.wait(self.lease_s / 3):
            try:
                self._renew()
            except LedgerError as exc:
                logger.warning("%s (holds of this replica expire in %.0f s without it)",
                               exc, self.lease_s)

    def is_claimer(self) -> bool:
        """Whether this replica claims and settles: it holds the ledger's claim lock."""
        with self._side_lock:
            if self._closed.is_set():
                return False
            try:
                side = self._side_connection()
                if not self._claimer:
                    row = side.execute("SELECT pg_try_advisory_lock(%s)",
                                       (_CLAIM_LOCK,)).fetchone()
                    self._claimer = bool(row and row[0])
                    if self._claimer:
                        logger.info("replica %s claims for the ledger %s", self.replica_name,
                                    self.path)
            except psycopg.Error as exc:
                raise LedgerError(f"ledger is unavailable: {str(exc).strip()}") from exc
            return self._claimer

    _STALE: Final = ("SELECT v.request_id FROM vouchers v LEFT JOIN replicas r ON "
                     "r.replica_id = v.replica WHERE v.status = 'held' AND "
                     f"(r.expires_at IS NULL OR r.expires_at < {_NOW})")

    def _release_stale(self, channel_id: str | None = None) -> int:
        """Release the holds whose replica's lease ran out (on ``channel_id`` only, if given)."""
        sql, args = self._STALE, cast("tuple[Any, ...]", ())
        if channel_id is not None:
            sql, args = sql + " AND v.channel_id = %s", (channel_id,)
        released = 0
        for (request_id,) in self._read(sql, args):
            with self._write() as cur:
                row = self._one(cur, "SELECT channel_id FROM vouchers WHERE request_id = %s",
                                (request_id,))
                if row is None:
                    continue
                self._channel_row(cur, row[0], lock=True)
                still = self._one(cur, self._STALE + " AND v.request_id = %s", (request_id,))
                if still is None:  # released (or renewed) meanwhile
                    continue
                self._release(cur, request_id)
                released += 1
                logger.info("released hold %s on channel %s: its replica's lease ran out",
                            request_id, row[0])
        return released

    # ------------------------------------------------------------ channels

    def ensure_channel(self, channel_id: str, config: str, payer: str,
                       baseline: int) -> ChannelRecord:
        check_amount(baseline, "baseline")
        channel_id = channel_id.lower()
        known = self.channel(channel_id)  # nearly always: no write, no WAL flush
        if known is not None:
            return known
        with self._write() as cur:
            cur.execute(
                "INSERT INTO channels VALUES (%s, %s, %s, %s, %s, '0x', %s, NULL, %s) "
                "ON CONFLICT (channel_id) DO NOTHING",
                (channel_id, config, payer, baseline, baseline, baseline, time.time()))
            found = self._channel_row(cur, channel_id)
        assert found is not None
        return found

    def channel(self, channel_id: str) -> ChannelRecord | None:
        rows = self._read(f"SELECT {_CHANNEL_COLUMNS} FROM channels WHERE channel_id = %s",
                          (channel_id.lower(),))
        return ChannelRecord(*rows[0]) if rows else None

    # ------------------------------------------------------------ vouchers

    def accept_voucher(self, request_id: str, channel_id: str, voucher_amount: int,
                       signature: str, max_amount: int) -> Hold:
        check_amount(voucher_amount, "voucher amount")
        check_amount(max_amount, "request maximum")
        channel_id = channel_id.lower()
        with self._write() as cur:
            ch = self._judge(cur, request_id, channel_id, voucher_amount, max_amount)
            if isinstance(ch, VoucherRefused):
                refusal = ch  # raised once committed: a dead replica's hold stays released
            else:
                refusal = None
                self._hold(cur, request_id, ch, voucher_amount, signature, max_amount)
        if refusal is not None:
            raise refusal
        assert isinstance(ch, ChannelRecord)
        return Hold(request_id, channel_id, voucher_amount, max_amount, ch.charged)

    def _hold(self, cur: Cursor, request_id: str, ch: ChannelRecord, voucher_amount: int,
              signature: str, max_amount: int) -> None:
        """Persist the voucher; ``request_id`` holds the channel."""
        now = time.time()
        cur.execute(
            "INSERT INTO vouchers VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'held', %s, %s) "
            "ON CONFLICT (request_id) DO UPDATE SET channel_id = EXCLUDED.channel_id, "
            "voucher_amount = EXCLUDED.voucher_amount, signature = EXCLUDED.signature, "
            "max_amount = EXCLUDED.max_amount, charged_before = EXCLUDED.charged_before, "
            "previous_amount = EXCLUDED.previous_amount, "
            "previous_signature = EXCLUDED.previous_signature, status = 'held', "
            "replica = EXCLUDED.replica, accepted_at = EXCLUDED.accepted_at",
            (request_id, ch.channel_id, voucher_amount, signature, max_amount, ch.charged,
             ch.voucher_amount, ch.voucher_signature, self.replica_id, now))
        cur.execute(
            "UPDATE channels SET voucher_amount = %s, voucher_signature = %s, "
            "pending_request = %s, updated_at = %s WHERE channel_id = %s",
            (voucher_amount, signature, request_id, now, ch.channel_id))

    def _judge(self, cur: Cursor, request_id: str, channel_id: str, voucher_amount: int,
               max_amount: int) -> ChannelRecord | VoucherRefused:
        """The channel (row locked) if the voucher may hold it, else why not. A hold left
        by a replica whose lease ran out is released first (what it receipted is charged)."""
        ch = self._channel_row(cur, channel_id, lock=True)
        if ch is None:
            return VoucherRefused("unknown-channel", f"channel {channel_id} is not known")
        if ch.pending_request is not None and self._one(
                cur, self._STALE + " AND v.request_id = %s", (ch.pending_request,)):
            logger.info("released hold %s on channel %s: its replica's lease ran out",
                        ch.pending_request, channel_id)
            self._release(cur, ch.pending_request)
            ch = self._channel_row(cur, channel_id)
            assert ch is not None
        prior = self._one(cur, "SELECT status, channel_id FROM vouchers WHERE request_id = %s",
                          (request_id,))
        if prior is not None and prior[1] != ch.channel_id:
            return request_id_in_use(request_id)  # another buyer's: nothing of it is revealed
        if prior is not None and prior[0] == "charged":
            return VoucherRefused("charged", f"request {request_id} was already served and "
                                  "charged", ch, self._receipt(cur, request_id))
        if ch.pending_request is not None:
            return VoucherRefused("busy", "the channel is serving another request; retry "
                                  "when it has finished", ch)
        expected = ch.charged + max_amount
        if voucher_amount != expected:
            return VoucherRefused(
                "mismatch", f"voucher for {voucher_amount} does not equal charged "
                f"({ch.charged}) plus this request's maximum ({max_amount}) = {expected}", ch,
                self._last_receipt(cur, channel_id))
        return ch

    def commit(self, hold: Hold, tokens_in: int, tokens_out: int, amount: int,
               sign: Callable[[Receipt], Receipt], chain_id: int) -> Receipt:
        check_amount(amount, "charge")
        with self._write(fsync=False) as cur:
            ch, status, _ = self._lock_hold(cur, hold)
            done = self._receipt(cur, hold.request_id) if status == "charged" else None
            if done is not None:
                return done
            ch = self._held(hold, ch, status)
            charge = min(amount, hold.max_amount)
            receipt = sign(Receipt(hold.request_id, hold.channel_id, tokens_in, tokens_out,
                                   charge, ch.charged + charge, chain_id))
            self._charge(cur, receipt)
        return receipt

    @staticmethod
    def _charge(cur: Cursor, receipt: Receipt) -> None:
        """Charge ``receipt`` (signed, for the held request): the hold ends, the receipt stays."""
        now = time.time()
        cur.execute("UPDATE channels SET charged = %s, pending_request = NULL, updated_at = %s "
                    "WHERE channel_id = %s", (receipt.cumulative, now, receipt.channel_id))
        cur.execute("UPDATE vouchers SET status = 'charged' WHERE request_id = %s",
                    (receipt.request_id,))
        cur.execute("DELETE FROM running_receipts WHERE request_id = %s", (receipt.request_id,))
        cur.execute(
            f"INSERT INTO receipts ({_RECEIPT_COLUMNS}, claimed, created_at) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, FALSE, %s)".encode(),
            (receipt.request_id, receipt.channel_id, receipt.tokens_in, receipt.tokens_out,
             receipt.amount, receipt.cumulative, receipt.chain_id, receipt.signer,
             receipt.signature, now))

    def progress(self, hold: Hold, tokens_in: int, tokens_out: int, amount: int,
                 sign: Callable[[Receipt], Receipt], chain_id: int) -> Receipt:
        check_amount(amount, "charge")
        with self._write(fsync=False) as cur:
            found, status, before = self._lock_hold(cur, hold)
            ch = self._held(hold, found, status)
            charge = min(amount, hold.max_amount)
            if before is not None and charge < before:
                raise LedgerError(f"running receipt for {hold.request_id} would fall from "
                                  f"{before} to {charge}")
            receipt = sign(Receipt(hold.request_id, hold.channel_id, tokens_in, tokens_out,
                                   charge, ch.charged + charge, chain_id))
            cur.execute(
                "INSERT INTO running_receipts VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (request_id) DO UPDATE SET tokens_in = EXCLUDED.tokens_in, "
                "tokens_out = EXCLUDED.tokens_out, amount = EXCLUDED.amount, "
                "cumulative = EXCLUDED.cumulative, chain_id = EXCLUDED.chain_id, "
                "signer = EXCLUDED.signer, signature = EXCLUDED.signature, "
                "updated_at = EXCLUDED.updated_at",
                (receipt.request_id, tokens_in, tokens_out, charge, receipt.cumulative,
                 chain_id, receipt.signer, receipt.signature, time.time()))
        return receipt

    @classmethod
    def _lock_hold(cls, cur: Cursor, hold: Hold
                   ) -> tuple[ChannelRecord | None, str | None, int | None]:
        """Lock the hold's channel; (its record, the voucher's status, the running receipt's
        amount), in one round trip."""
        row = cls._one(
            cur, f"SELECT {_CHANNEL_COLUMNS_C}, v.status, rr.amount FROM channels c "
            "LEFT JOIN vouchers v ON v.request_id = %s AND v.channel_id = c.channel_id "
            "LEFT JOIN running_receipts rr ON rr.request_id = v.request_id "
            "WHERE c.channel_id = %s FOR UPDATE OF c", (hold.request_id, hold.channel_id))
        if row is None:
            return None, None, None
        return ChannelRecord(*row[:8]), row[8], row[9]

    @staticmethod
    def _held(hold: Hold, ch: ChannelRecord | None, status: str | None) -> ChannelRecord:
        if status != "held" or ch is None or ch.pending_request != hold.request_id:
            raise LedgerError(f"request {hold.request_id} holds no voucher to charge")
        return ch

    def release(self, hold: Hold) -> Receipt | None:
        with self._write(fsync=False) as cur:
            self._channel_row(cur, hold.channel_id.lower(), lock=True)
            return self._release(cur, hold.request_id)

    @classmethod
    def _release(cls, cur: Cursor, request_id: str) -> Receipt | None:
        """Release ``request_id``'s hold; its channel's row is locked by the caller."""
        row = cls._one(
            cur, "SELECT channel_id, voucher_amount, previous_amount, previous_signature, "
            "status FROM vouchers WHERE request_id = %s", (request_id,))
        if row is None or row[4] != "held":
            return None
        channel_id, amount, prev_amount, prev_sig, _ = row
        running = cls._one(
            cur, "SELECT request_id, %s, tokens_in, tokens_out, amount, cumulative, chain_id, "
            "signer, signature FROM running_receipts WHERE request_id = %s",
            (channel_id, request_id))
        if running is not None:  # the buyer holds this receipt: it is what the answer cost
            receipt = Receipt(*running)
            cls._charge(cur, receipt)
            return receipt
        cur.execute("UPDATE vouchers SET status = 'released' WHERE request_id = %s",
                    (request_id,))
        cls._put_back(cur, channel_id, request_id, amount, prev_amount, prev_sig)
        return None

    @staticmethod
    def _put_back(cur: Cursor, channel_id: str, request_id: str, amount: int,
                  prev_amount: int, prev_sig: str) -> None:
        """``request_id`` no longer holds the channel, and the voucher before its own
        (``amount``) is current again if its own still is."""
        cur.execute(
            "UPDATE channels SET voucher_amount = CASE WHEN voucher_amount = %s THEN %s "
            "ELSE voucher_amount END, voucher_signature = CASE WHEN voucher_amount = %s "
            "THEN %s ELSE voucher_signature END, pending_request = NULL, updated_at = %s "
            "WHERE channel_id = %s AND pending_request = %s",
            (amount, prev_amount, amount, prev_sig, time.time(), channel_id, request_id))

    def retract(self, hold: Hold) -> None:
        channel_id = hold.channel_id.lower()
        with self._write(fsync=False) as cur:
            self._channel_row(cur, channel_id, lock=True)
            row = self._one(cur, "SELECT status, voucher_amount, previous_amount, "
                            "previous_signature FROM vouchers WHERE request_id = %s AND "
                            "channel_id = %s", (hold.request_id, channel_id))
            if row is None or row[0] != "held":
                return
            if self._one(cur, "SELECT 1 FROM running_receipts WHERE request_id = %s",
                         (hold.request_id,)) is not None:
                self._release(cur, hold.request_id)  # served in part: what it receipted
                return
            _, amount, prev_amount, prev_sig = row
            cur.execute("DELETE FROM vouchers WHERE request_id = %s", (hold.request_id,))
            self._put_back(cur, channel_id, hold.request_id, amount, prev_amount, prev_sig)
            cur.execute(
                "DELETE FROM channels WHERE channel_id = %s AND pending_request IS NULL AND "
                "NOT EXISTS (SELECT 1 FROM vouchers WHERE channel_id = %s) AND "
                "NOT EXISTS (SELECT 1 FROM receipts WHERE channel_id = %s) AND "
                "NOT EXISTS (SELECT 1 FROM claims WHERE channel_id = %s) AND "
                "NOT EXISTS (SELECT 1 FROM claim_failures WHERE channel_id = %s)",
                (channel_id,) * 5)

    def recover(self) -> int:
        """Release every hold whose replica is gone (its lease ran out); how many.

        Holds of live replicas -- requests they are serving now -- are left alone; those
        of a replica that died less than a lease ago are released by the first voucher
        offered on their channel, or by a later :meth:`recover` or claim.
        """
        return self._release_stale()

    # ------------------------------------------------------------ receipts

    @classmethod
    def _last_receipt(cls, cur: Cursor, channel_id: str) -> Receipt | None:
        """The channel's latest receipt (the one whose cumulative is its charged total)."""
        row = cls._one(cur, f"SELECT {_RECEIPT_COLUMNS} FROM receipts WHERE channel_id = %s "
                       "ORDER BY cumulative DESC, seq DESC LIMIT 1", (channel_id,))
        return Receipt(*row) if row else None

    @classmethod
    def _receipt(cls, cur: Cursor, request_id: str) -> Receipt | None:
        row = cls._one(cur, f"SELECT {_RECEIPT_COLUMNS} FROM receipts WHERE request_id = %s",
                       (request_id,))
        return Receipt(*row) if row else None

    def receipts(self, channel_id: str | None = None) -> list[Receipt]:
        sql = f"SELECT {_RECEIPT_COLUMNS} FROM receipts"
        args: tuple[Any, ...] = ()
        if channel_id is not None:
            sql += " WHERE channel_id = %s"
            args = (channel_id.lower(),)
        return [Receipt(*r) for r in self._read(sql + " ORDER BY cumulative, seq", args)]

    # ------------------------------------------------------------ claims

    def claim_candidates(self) -> list[ClaimCandidate]:
        """What to claim -- empty unless this replica is the ledger's claimer (see the
        module's docstring); dead replicas' holds are released first."""
        if not self.is_claimer():
            return []
        self._release_stale()
        rows = self._read(
            "SELECT c.channel_id, c.config, c.charged, c.claimed, c.voucher_amount, "
            "c.voucher_signature, MIN(r.created_at), COUNT(r.request_id) "
            "FROM channels c JOIN receipts r ON r.channel_id = c.channel_id AND NOT r.claimed "
            "WHERE c.charged > c.claimed GROUP BY c.channel_id ORDER BY c.channel_id")
        return [ClaimCandidate(*r) for r in rows]

    def record_claim(self, totals: dict[str, int], tx_hash: str, gas_used: int) -> None:
        now = time.time()
        with self._write() as cur:
            for channel_id, total in sorted(totals.items()):
                ch = self._channel_row(cur, channel_id.lower(), lock=True)
                if ch is None or total < ch.claimed or total > ch.charged:
                    raise LedgerError(f"claim total {total} does not fit channel {channel_id}")
                cur.execute("INSERT INTO claims (channel_id, amount, total, tx_hash, gas_used, "
                            "created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                            (ch.channel_id, total - ch.claimed, total, tx_hash, gas_used, now))
                cur.execute("UPDATE channels SET claimed = %s WHERE channel_id = %s",
                            (total, ch.channel_id))
                cur.execute("UPDATE receipts SET claimed = TRUE WHERE channel_id = %s AND "
                            "cumulative <= %s", (ch.channel_id, total))
                cur.execute("DELETE FROM claim_failures WHERE channel_id = %s", (ch.channel_id,))

    def record_settle(self, tx_hash: str, amount: int, gas_used: int) -> None:
        with self._write() as cur:
            row = self._one(cur, "INSERT INTO settlements (amount, tx_hash, gas_used, "
                            "created_at) VALUES (%s, %s, %s, %s) RETURNING id",
                            (amount, tx_hash, gas_used, time.time()))
            assert row is not None
            cur.execute("UPDATE claims SET settle_id = %s WHERE settle_id IS NULL", (row[0],))

    def unsettled(self) -> int:
        """Claimed and not settled yet (0 unless this replica is the claimer)."""
        if not self.is_claimer():
            return 0
        rows = self._read("SELECT COALESCE(SUM(amount), 0) FROM claims WHERE settle_id IS NULL")
        return int(rows[0][0])

    def record_claim_failure(self, channel_id: str, error: str, now: float,
                             backoff: Callable[[int], float]) -> ClaimFailure:
        channel_id = channel_id.lower()
        with self._write() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (channel_id,))
            row = self._one(cur, "SELECT failures, first_failed_at FROM claim_failures "
                            "WHERE channel_id = %s", (channel_id,))
            failures, first = (int(row[0]) + 1, float(row[1])) if row else (1, now)
            failure = ClaimFailure(channel_id, failures, error[:500], first,
                                   now + backoff(failures))
            cur.execute(
                "INSERT INTO claim_failures VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (channel_id) DO UPDATE SET failures = EXCLUDED.failures, "
                "last_error = EXCLUDED.last_error, first_failed_at = EXCLUDED.first_failed_at, "
                "retry_at = EXCLUDED.retry_at",
                (channel_id, failures, failure.last_error, first, failure.retry_at))
        return failure

    def claim_failures(self) -> list[ClaimFailure]:
        rows = self._read("SELECT channel_id, failures, last_error, first_failed_at, retry_at "
                          "FROM claim_failures ORDER BY channel_id")
        return [ClaimFailure(*r) for r in rows]

    def earnings(self) -> list[Earnings]:
        rows = self._read(
            "SELECT c.channel_id, c.payer, c.charged, c.claimed, "
            "COALESCE((SELECT SUM(amount) FROM claims k WHERE k.channel_id = c.channel_id "
            "AND k.settle_id IS NOT NULL), 0), "
            "(SELECT COUNT(*) FROM receipts r WHERE r.channel_id = c.channel_id), "
            "COALESCE((SELECT SUM(amount) FROM claims k WHERE k.channel_id = c.channel_id "
            "AND k.settle_id IS NULL), 0), "
            "COALESCE(f.failures, 0), COALESCE(f.last_error, '') "
            "FROM channels c LEFT JOIN claim_failures f ON f.channel_id = c.channel_id "
            "ORDER BY c.channel_id")
        return [Earnings(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]),
                         int(r[7]), r[8]) for r in rows]

    def gas_used(self) -> tuple[int, int]:
        """(transactions, gas) spent on claims and settlements so far (a settle that found
        nothing left to settle sent no transaction: recorded with no hash, not counted)."""
        rows = self._read(
            "SELECT (SELECT COUNT(DISTINCT tx_hash) FROM claims) + (SELECT COUNT(*) FROM "
            "settlements WHERE tx_hash != ''), COALESCE((SELECT SUM(g) FROM (SELECT "
            "MAX(gas_used) AS g FROM claims GROUP BY tx_hash) t), 0) + "
            "COALESCE((SELECT SUM(gas_used) FROM settlements), 0)")
        return int(rows[0][0]), int(rows[0][1])

    def close(self) -> None:
        """Stop renewing the lease and give it up: what this replica still holds (nothing,
        after a clean shutdown) is released by the next replica to look."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._side_lock:
            side, self._side = self._side, None
            if side is not None and not side.closed:
                try:
                    side.execute("UPDATE replicas SET expires_at = 0 WHERE replica_id = %s",
                                 (self.replica_id,))
                except psycopg.Error as exc:
                    logger.warning("could not give the ledger lease up: %s", exc)
                side.close()  # the claim lock goes with the session
            self._claimer = False
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
