"""The ledger in one SQLite file per node, in WAL mode.

Every write is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock makes
each channel operation a compare-and-set). Accepting a voucher, claims and
settlements commit with ``synchronous=FULL``: the call returns only once the
WAL is fsync'd, so an accepted voucher survives a SIGKILL or a power loss
before any inference runs. Charging a request (:meth:`SqliteLedger.commit`)
and releasing one use ``synchronous=NORMAL``: durable at once against a
process crash, and against a power loss from the next fsync'd write (the next
accepted voucher), which saves one fsync per request. A charge lost that way
costs the node, never the payer: the hold is released on restart and the
payer's next voucher is resynced with a corrective 402.
Calls are short and synchronous; a process-wide lock serialises them.

The ledger holds the only copy of the vouchers the node has not claimed yet,
so an existing file is never replaced: opening one that is empty, not a SQLite
database, fails SQLite's ``quick_check`` or lacks the ledger's tables raises
:class:`~agoranet.errors.LedgerError` (the node refuses to start). A new
ledger is built in a temporary file and renamed into place, so a crash while
creating it never leaves a half-made file behind.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

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
from agoranet.payments.receipts import Receipt
from agoranet.sqlite_store import SqliteStore

__all__ = ["SqliteLedger"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS channels (
    channel_id        TEXT PRIMARY KEY,
    config            TEXT NOT NULL,
    payer             TEXT NOT NULL,
    charged           INTEGER NOT NULL CHECK (charged >= 0),
    voucher_amount    INTEGER NOT NULL CHECK (voucher_amount >= charged),
    voucher_signature TEXT NOT NULL,
    claimed           INTEGER NOT NULL CHECK (claimed >= 0 AND claimed <= charged),
    pending_request   TEXT,
    updated_at        REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS vouchers (
    request_id         TEXT PRIMARY KEY,
    channel_id         TEXT NOT NULL REFERENCES channels(channel_id),
    voucher_amount     INTEGER NOT NULL,
    signature          TEXT NOT NULL,
    max_amount         INTEGER NOT NULL,
    charged_before     INTEGER NOT NULL,
    previous_amount    INTEGER NOT NULL,
    previous_signature TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('held', 'charged', 'released')),
    accepted_at        REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    request_id  TEXT PRIMARY KEY,
    channel_id  TEXT NOT NULL,
    tokens_in   INTEGER NOT NULL,
    tokens_out  INTEGER NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount >= 0),
    cumulative  INTEGER NOT NULL,
    chain_id    INTEGER NOT NULL,
    signer      TEXT NOT NULL,
    signature   TEXT NOT NULL,
    claimed     INTEGER NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_unclaimed ON receipts(channel_id, claimed);
CREATE INDEX IF NOT EXISTS receipts_cumulative ON receipts(channel_id, cumulative);
CREATE TABLE IF NOT EXISTS running_receipts (
    request_id  TEXT PRIMARY KEY REFERENCES vouchers(request_id),
    tokens_in   INTEGER NOT NULL,
    tokens_out  INTEGER NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount >= 0),
    cumulative  INTEGER NOT NULL,
    chain_id    INTEGER NOT NULL,
    signer      TEXT NOT NULL,
    signature   TEXT NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id  TEXT NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount >= 0),
    total       INTEGER NOT NULL,
    tx_hash     TEXT NOT NULL,
    gas_used    INTEGER NOT NULL,
    settle_id   INTEGER REFERENCES settlements(id),
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settlements (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    amount      INTEGER NOT NULL,
    tx_hash     TEXT NOT NULL,
    gas_used    INTEGER NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claim_failures (
    channel_id       TEXT PRIMARY KEY,
    failures         INTEGER NOT NULL,
    last_error       TEXT NOT NULL,
    first_failed_at  REAL NOT NULL,
    retry_at         REAL NOT NULL
);
"""
# Tables every ledger file has had from the start (claim_failures came later and is
# added to an older file on open).
_CORE_TABLES: Final = frozenset(
    {"channels", "vouchers", "receipts", "running_receipts", "claims", "settlements"})


def _connect(path: str, *, existing: Path | None = None) -> sqlite3.Connection:
    """A connection in WAL mode; ``existing`` (the file ``path`` names) is checked first,
    before anything is written to it."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    try:
        if existing is not None:
            _check_existing(existing, db)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
    except (sqlite3.Error, LedgerError):
        db.close()
        raise
    return db


def _create(path: Path) -> None:
    """A new, empty ledger at ``path``, built aside and renamed into place."""
    aside = path.with_name(f".{path.name}.new-{os.getpid()}")
    for leftover in (aside, Path(f"{aside}-wal"), Path(f"{aside}-shm")):
        leftover.unlink(missing_ok=True)
    db = _connect(str(aside))
    try:
        db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    aside.replace(path)
    if hasattr(os, "O_DIRECTORY"):  # make the rename durable (POSIX)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _check_existing(path: Path, db: sqlite3.Connection) -> None:
    """LedgerError unless ``db`` (opened from the existing file ``path``) is a sound ledger."""
    problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise LedgerError(f"the ledger {path} is corrupt ({'; '.join(problems[:3])})")
    tables = {row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
    missing = sorted(_CORE_TABLES - tables)
    if missing:
        raise LedgerError(f"{path} is not an agoranet ledger (no table {', '.join(missing)})")


class SqliteLedger(SqliteStore):
    """:class:`~agoranet.payments.accept.ledger.Ledger` in a SQLite file (or ``:memory:``)."""

    _store_name = "ledger"
    _error = LedgerError

    def __init__(self, path: Path | str) -> None:
        self.path = path
        file = None if str(path) == ":memory:" else Path(path)
        try:
            if file is not None:
                self._open_file(file)
            else:
                self._db = _connect(":memory:")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}; it is left as it is "
                              "(move it aside only if you mean to lose its vouchers)") from exc
        except OSError as exc:
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
        self._start_transactions()

    def _open_file(self, file: Path) -> None:
        wal = Path(f"{file}-wal")
        if not file.exists() and wal.is_file() and wal.stat().st_size > 0:
            raise LedgerError(f"the ledger {file} is missing but its write-ahead log {wal} is "
                              "there (moved or deleted without it?): restore the ledger, or "
                              "move the log aside to start a new one")
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            _create(file)
        elif not file.is_file():
            raise LedgerError(f"the ledger {file} is not a file")
        elif file.stat().st_size == 0:
            raise LedgerError(
                f"the ledger {file} is empty (0 bytes): it was truncated or replaced, and the "
                "node will not start on it, since it may have held unclaimed vouchers. Restore "
                "it from a backup, or move it aside to start a new ledger")
        self._db = _connect(str(file), existing=file)

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def _channel_row(db: sqlite3.Connection, channel_id: str) -> ChannelRecord | None:
        row = db.execute(
            "SELECT channel_id, config, payer, charged, voucher_amount, voucher_signature, "
            "claimed, pending_request FROM channels WHERE channel_id = ?", (channel_id,)
        ).fetchone()
        return ChannelRecord(*row) if row else None

    # ------------------------------------------------------------ channels

    def ensure_channel(self, channel_id: str, config: str, payer: str,
                       baseline: int) -> ChannelRecord:
        check_amount(baseline, "baseline")
        channel_id = channel_id.lower()
        with self._lock:
            known = self._channel_row(self._db, channel_id)
        if known is not None:
            return known
        with self._write() as db:
            found = self._channel_row(db, channel_id)
            if found is not None:
                return found
            db.execute(
                "INSERT INTO channels VALUES (?, ?, ?, ?, ?, '0x', ?, NULL, ?)",
                (channel_id, config, payer, baseline, baseline, baseline, time.time()),
            )
            created = self._channel_row(db, channel_id)
        assert created is not None
        return created

    def channel(self, channel_id: str) -> ChannelRecord | None:
        with self._lock:
            return self._channel_row(self._db, channel_id.lower())

    # ------------------------------------------------------------ vouchers

    def accept_voucher(self, request_id: str, channel_id: str, voucher_amount: int,
                       signature: str, max_amount: int) -> Hold:
        check_amount(voucher_amount, "voucher amount")
        check_amount(max_amount, "request maximum")
        channel_id = channel_id.lower()
        with self._write() as db:
            ch = self._channel_row(db, channel_id)
            if ch is None:
                raise VoucherRefused("unknown-channel", f"channel {channel_id} is not known")
            prior = db.execute("SELECT status, channel_id FROM vouchers WHERE request_id = ?",
                               (request_id,)).fetchone()
            if prior is not None and prior[1] != channel_id:
                raise request_id_in_use(request_id)  # another buyer's: nothing of it is revealed
            if prior is not None and prior[0] == "charged":
                receipt = self._receipt(db, request_id)
                raise VoucherRefused("charged", f"request {request_id} was already served "
                                     "and charged", ch, receipt)
            if ch.pending_request is not None:
                raise VoucherRefused("busy", "the channel is serving another request; retry "
                                     "when it has finished", ch)
            expected = ch.charged + max_amount
            if voucher_amount != expected:
                raise VoucherRefused(
                    "mismatch", f"voucher for {voucher_amount} does not equal charged "
                    f"({ch.charged}) plus this request's maximum ({max_amount}) = {expected}", ch,
                    self._last_receipt(db, channel_id))
            db.execute(
                "INSERT OR REPLACE INTO vouchers VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'held', ?)",
                (request_id, channel_id, voucher_amount, signature, max_amount, ch.charged,
                 ch.voucher_amount, ch.voucher_signature, time.time()),
            )
            db.execute(
                "UPDATE channels SET voucher_amount = ?, voucher_signature = ?, "
                "pending_request = ?, updated_at = ? WHERE channel_id = ?",
                (voucher_amount, signature, request_id, time.time(), channel_id),
            )
        return Hold(request_id, channel_id, voucher_amount, max_amount, ch.charged)

    def commit(self, hold: Hold, tokens_in: int, tokens_out: int, amount: int,
               sign: Callable[[Receipt], Receipt], chain_id: int) -> Receipt:
        check_amount(amount, "charge")
        with self._write(fsync=False) as db:
            done = self._receipt(db, hold.request_id)
            if done is not None:
                return done
            ch = self._held(db, hold)
            charge = min(amount, hold.max_amount)
            receipt = sign(Receipt(hold.request_id, hold.channel_id, tokens_in, tokens_out,
                                   charge, ch.charged + charge, chain_id))
            self._charge(db, receipt)
        return receipt

    @staticmethod
    def _charge(db: sqlite3.Connection, receipt: Receipt) -> None:
        """Charge ``receipt`` (signed, for the held request): the hold ends, the receipt stays."""
        db.execute("UPDATE channels SET charged = ?, pending_request = NULL, updated_at = ? "
                   "WHERE channel_id = ?", (receipt.cumulative, time.time(), receipt.channel_id))
        db.execute("UPDATE vouchers SET status = 'charged' WHERE request_id = ?",
                   (receipt.request_id,))
        db.execute("DELETE FROM running_receipts WHERE request_id = ?", (receipt.request_id,))
        db.execute(
            "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (receipt.request_id, receipt.channel_id, receipt.tokens_in, receipt.tokens_out,
             receipt.amount, receipt.cumulative, receipt.chain_id, receipt.signer,
             receipt.signature, time.time()),
        )

    def progress(self, hold: Hold, tokens_in: int, tokens_out: int, amount: int,
                 sign: Callable[[Receipt], Receipt], chain_id: int) -> Receipt:
        check_amount(amount, "charge")
        with self._write(fsync=False) as db:
            ch = self._held(db, hold)
            charge = min(amount, hold.max_amount)
            before = db.execute("SELECT amount FROM running_receipts WHERE request_id = ?",
                                (hold.request_id,)).fetchone()
            if before is not None and charge < before[0]:
                raise LedgerError(f"running receipt for {hold.request_id} would fall from "
                                  f"{before[0]} to {charge}")
            receipt = sign(Receipt(hold.request_id, hold.channel_id, tokens_in, tokens_out,
                                   charge, ch.charged + charge, chain_id))
            db.execute(
                "INSERT OR REPLACE INTO running_receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (receipt.request_id, tokens_in, tokens_out, charge, receipt.cumulative,
                 chain_id, receipt.signer, receipt.signature, time.time()),
            )
        return receipt

    def _held(self, db: sqlite3.Connection, hold: Hold) -> ChannelRecord:
        row = db.execute("SELECT status FROM vouchers WHERE request_id = ?",
                         (hold.request_id,)).fetchone()
        ch = self._channel_row(db, hold.channel_id)
        if row is None or row[0] != "held" or ch is None or \
                ch.pending_request != hold.request_id:
            raise LedgerError(f"request {hold.request_id} holds no voucher to charge")
        return ch

    def release(self, hold: Hold) -> Receipt | None:
        with self._write(fsync=False) as db:
            return self._release(db, hold.request_id)

    @classmethod
    def _release(cls, db: sqlite3.Connection, request_id: str) -> Receipt | None:
        row = db.execute(
            "SELECT channel_id, voucher_amount, previous_amount, previous_signature, status "
            "FROM vouchers WHERE request_id = ?", (request_id,)).fetchone()
        if row is None or row[4] != "held":
            return None
        channel_id, amount, prev_amount, prev_sig, _ = row
        running = db.execute(
            "SELECT request_id, ?, tokens_in, tokens_out, amount, cumulative, chain_id, signer,"
            " signature FROM running_receipts WHERE request_id = ?",
            (channel_id, request_id)).fetchone()
        if running is not None:  # the buyer holds this receipt: it is what the answer cost
            receipt = Receipt(*running)
            cls._charge(db, receipt)
            return receipt
        db.execute("UPDATE vouchers SET status = 'released' WHERE request_id = ?", (request_id,))
        cls._put_back(db, channel_id, request_id, amount, prev_amount, prev_sig)
        return None

    @staticmethod
    def _put_back(db: sqlite3.Connection, channel_id: str, request_id: str, amount: int,
                  prev_amount: int, prev_sig: str) -> None:
        """``request_id`` no longer holds the channel, and the voucher before its own
        (``amount``) is current again if its own still is."""
        db.execute(
            "UPDATE channels SET voucher_amount = CASE WHEN voucher_amount = ? THEN ? "
            "ELSE voucher_amount END, voucher_signature = CASE WHEN voucher_amount = ? THEN ? "
            "ELSE voucher_signature END, pending_request = NULL, updated_at = ? "
            "WHERE channel_id = ? AND pending_request = ?",
            (amount, prev_amount, amount, prev_sig, time.time(), channel_id, request_id),
        )

    def retract(self, hold: Hold) -> None:
        with self._write(fsync=False) as db:
            row = db.execute("SELECT status, voucher_amount, previous_amount, "
                             "previous_signature FROM vouchers WHERE request_id = ? AND "
                             "channel_id = ?", (hold.request_id, hold.channel_id)).fetchone()
            if row is None or row[0] != "held":
                return
            if db.execute("SELECT 1 FROM running_receipts WHERE request_id = ?",
                          (hold.request_id,)).fetchone() is not None:
                self._release(db, hold.request_id)  # served in part: what it receipted
                return
            _, amount, prev_amount, prev_sig = row
            db.execute("DELETE FROM vouchers WHERE request_id = ?", (hold.request_id,))
            self._put_back(db, hold.channel_id, hold.request_id, amount, prev_amount, prev_sig)
            db.execute(
                "DELETE FROM channels WHERE channel_id = ? AND pending_request IS NULL AND "
                "NOT EXISTS (SELECT 1 FROM vouchers WHERE channel_id = ?) AND "
                "NOT EXISTS (SELECT 1 FROM receipts WHERE channel_id = ?) AND "
                "NOT EXISTS (SELECT 1 FROM claims WHERE channel_id = ?) AND "
                "NOT EXISTS (SELECT 1 FROM claim_failures WHERE channel_id = ?)",
                (hold.channel_id,) * 5)

    def recover(self) -> int:
        with self._write() as db:
            held = [r[0] for r in db.execute(
                "SELECT request_id FROM vouchers WHERE status = 'held'").fetchall()]
            for request_id in held:
                self._release(db, request_id)
        return len(held)

    # ------------------------------------------------------------ receipts

    @staticmethod
    def _last_receipt(db: sqlite3.Connection, channel_id: str) -> Receipt | None:
        """The channel's latest receipt (the one whose cumulative is its charged total)."""
        row = db.execute(
            "SELECT request_id, channel_id, tokens_in, tokens_out, amount, cumulative, chain_id, "
            "signer, signature FROM receipts WHERE channel_id = ? ORDER BY cumulative DESC, "
            "created_at DESC LIMIT 1", (channel_id,)).fetchone()
        return Receipt(*row) if row else None

    @staticmethod
    def _receipt(db: sqlite3.Connection, request_id: str) -> Receipt | None:
        row = db.execute(
            "SELECT request_id, channel_id, tokens_in, tokens_out, amount, cumulative, chain_id, "
            "signer, signature FROM receipts WHERE request_id = ?", (request_id,)).fetchone()
        return Receipt(*row) if row else None

    def receipts(self, channel_id: str | None = None) -> list[Receipt]:
        sql = ("SELECT request_id, channel_id, tokens_in, tokens_out, amount, cumulative, "
               "chain_id, signer, signature FROM receipts")
        args: tuple[Any, ...] = ()
        if channel_id is not None:
            sql += " WHERE channel_id = ?"
            args = (channel_id.lower(),)
        return [Receipt(*r) for r in self._read(sql + " ORDER BY cumulative", args)]

    # ------------------------------------------------------------ claims

    def claim_candidates(self) -> list[ClaimCandidate]:
        rows = self._read(
            "SELECT c.channel_id, c.config, c.charged, c.claimed, c.voucher_amount, "
            "c.voucher_signature, MIN(r.created_at), COUNT(r.request_id) "
            "FROM channels c JOIN receipts r ON r.channel_id = c.channel_id AND r.claimed = 0 "
            "WHERE c.charged > c.claimed GROUP BY c.channel_id")
        return [ClaimCandidate(*r) for r in rows]

    def record_claim(self, totals: dict[str, int], tx_hash: str, gas_used: int) -> None:
        now = time.time()
        with self._write() as db:
            for channel_id, total in totals.items():
                ch = self._channel_row(db, channel_id.lower())
                if ch is None or total < ch.claimed or total > ch.charged:
                    raise LedgerError(f"claim total {total} does not fit channel {channel_id}")
                db.execute("INSERT INTO claims (channel_id, amount, total, tx_hash, gas_used, "
                           "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                           (ch.channel_id, total - ch.claimed, total, tx_hash, gas_used, now))
                db.execute("UPDATE channels SET claimed = ? WHERE channel_id = ?",
                           (total, ch.channel_id))
                db.execute("UPDATE receipts SET claimed = 1 WHERE channel_id = ? AND "
                           "cumulative <= ?", (ch.channel_id, total))
                db.execute("DELETE FROM claim_failures WHERE channel_id = ?", (ch.channel_id,))

    def record_settle(self, tx_hash: str, amount: int, gas_used: int) -> None:
        with self._write() as db:
            cur = db.execute("INSERT INTO settlements (amount, tx_hash, gas_used, created_at) "
                             "VALUES (?, ?, ?, ?)", (amount, tx_hash, gas_used, time.time()))
            db.execute("UPDATE claims SET settle_id = ? WHERE settle_id IS NULL",
                       (cur.lastrowid,))

    def unsettled(self) -> int:
        rows = self._read("SELECT COALESCE(SUM(amount), 0) FROM claims WHERE settle_id IS NULL")
        return int(rows[0][0])

    def record_claim_failure(self, channel_id: str, error: str, now: float,
                             backoff: Callable[[int], float]) -> ClaimFailure:
        channel_id = channel_id.lower()
        with self._write() as db:
            row = db.execute("SELECT failures, first_failed_at FROM claim_failures "
                             "WHERE channel_id = ?", (channel_id,)).fetchone()
            failures, first = (int(row[0]) + 1, float(row[1])) if row else (1, now)
            failure = ClaimFailure(channel_id, failures, error[:500], first,
                                   now + backoff(failures))
            db.execute("INSERT OR REPLACE INTO claim_failures VALUES (?, ?, ?, ?, ?)",
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
        return [Earnings(*r) for r in rows]

    def gas_used(self) -> tuple[int, int]:
        """(transactions, gas) spent on claims and settlements so far (a settle that found
        nothing left to settle sent no transaction: recorded with no hash, not counted)."""
        rows = self._read(
            "SELECT (SELECT COUNT(DISTINCT tx_hash) FROM claims) + (SELECT COUNT(*) FROM "
            "settlements WHERE tx_hash != ''), COALESCE((SELECT SUM(g) FROM (SELECT "
            "MAX(gas_used) AS g FROM claims GROUP BY tx_hash)), 0) + "
            "COALESCE((SELECT SUM(gas_used) FROM settlements), 0)")
        return int(rows[0][0]), int(rows[0][1])

