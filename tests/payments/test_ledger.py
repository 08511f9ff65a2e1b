"""The ledger: the voucher rules, idempotency, crash recovery, races -- each protocol-level
case run against SQLite and PostgreSQL (``ledgers``, tests/payments/ledgers.py); then what
only the SQLite file has (WAL, fsync, damaged files)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from eth_account import Account

from agoranet.errors import LedgerError
from agoranet.payments.accept.ledger import VoucherRefused
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import Ledgers

CID = "0x" + "11" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


@pytest.fixture
def ledger(ledgers: Ledgers) -> SqliteLedger:
    book: SqliteLedger = ledgers.open()  # or a PgLedger: the same protocol
    book.ensure_channel(CID, "{}", "0xpayer", 0)
    return book


def test_wal_and_full_sync(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    ledger.ensure_channel(CID, "{}", "0xpayer", 0)
    assert ledger._read("PRAGMA journal_mode")[0][0] == "wal"
    assert ledger._read("PRAGMA synchronous")[0][0] == 2  # FULL
    hold = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    ledger.commit(hold, 1, 1, 10, SIGNER.sign, 1)
    assert ledger._read("PRAGMA synchronous")[0][0] == 1  # a charge: NORMAL
    ledger.accept_voucher("r2", CID, 110, "0xs2", 100)
    assert ledger._read("PRAGMA synchronous")[0][0] == 2  # a voucher is fsync'd


def test_accept_commit_and_carry(ledger: SqliteLedger) -> None:
    hold = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    receipt = ledger.commit(hold, 3, 4, 30, SIGNER.sign, 31337)
    assert (receipt.amount, receipt.cumulative) == (30, 30)
    ch = ledger.channel(CID)
    assert ch is not None and (ch.charged, ch.voucher_amount, ch.pending_request) == (30, 100, None)
    # the next voucher is charged + this request's maximum (x402 batch-settlement)
    hold2 = ledger.accept_voucher("r2", CID, 130, "0xs2", 100)
    assert ledger.commit(hold2, 1, 1, 500, SIGNER.sign, 31337).amount == 100  # capped


def test_refusals(ledger: SqliteLedger) -> None:
    hold = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    with pytest.raises(VoucherRefused) as busy:
        ledger.accept_voucher("r2", CID, 200, "0xs2", 100)
    assert busy.value.reason == "busy"
    ledger.commit(hold, 1, 1, 10, SIGNER.sign, 31337)
    with pytest.raises(VoucherRefused) as mismatch:
        ledger.accept_voucher("r3", CID, 150, "0xs3", 100)
    assert mismatch.value.reason == "mismatch" and mismatch.value.channel is not None
    # x402 batch-settlement: voucher == charged + max, even below the previous voucher
    low = ledger.accept_voucher("r3", CID, 60, "0xs4", 50)
    assert ledger.channel(CID).voucher_amount == 60  # type: ignore[union-attr]
    assert ledger.commit(low, 1, 1, 80, SIGNER.sign, 31337).cumulative == 60  # capped at max
    with pytest.raises(VoucherRefused) as unknown:
        ledger.accept_voucher("r4", "0x" + "22" * 32, 10, "0x", 10)
    assert unknown.value.reason == "unknown-channel"
    with pytest.raises(LedgerError):
        ledger.accept_voucher("r5", CID, 2**64, "0x", 1)


def test_idempotent_on_request_id(ledger: SqliteLedger) -> None:
    hold = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    first = ledger.commit(hold, 1, 2, 40, SIGNER.sign, 31337)
    assert ledger.commit(hold, 1, 2, 40, SIGNER.sign, 31337) == first
    with pytest.raises(VoucherRefused) as again:
        ledger.accept_voucher("r1", CID, 140, "0xs2", 100)
    assert again.value.reason == "charged" and again.value.receipt == first
    assert ledger.channel(CID).charged == 40  # type: ignore[union-attr]


def test_release_restores_previous_voucher(ledger: SqliteLedger) -> None:
    ledger.commit(ledger.accept_voucher("r1", CID, 100, "0xs1", 100), 1, 1, 10, SIGNER.sign, 1)
    hold = ledger.accept_voucher("r2", CID, 110, "0xs2", 100)
    ledger.release(hold)
    ch = ledger.channel(CID)
    assert ch is not None and (ch.voucher_amount, ch.voucher_signature, ch.charged) == (
        100, "0xs1", 10)
    # the same voucher may be retried after a failure
    ledger.commit(ledger.accept_voucher("r2", CID, 110, "0xs2", 100), 1, 1, 5, SIGNER.sign, 1)


def test_recover_after_crash(ledgers: Ledgers) -> None:
    book = ledgers.open()
    book.ensure_channel(CID, "{}", "0xp", 0)
    book.commit(book.accept_voucher("a", CID, 100, "0xa", 100), 1, 1, 7, SIGNER.sign, 1)
    book.accept_voucher("b", CID, 107, "0xb", 100)  # in flight when the process dies
    # no close(): a second connection sees what was committed, as after SIGKILL
    ledgers.crash(book)
    again = ledgers.open()
    assert again.recover() == 1
    ch = again.channel(CID)
    assert ch is not None and (ch.charged, ch.voucher_amount, ch.pending_request) == (7, 100, None)
    [candidate] = again.claim_candidates()
    assert (candidate.unclaimed, candidate.voucher_amount) == (7, 100)
    again.record_claim({CID: 7}, "0xtx", 50_000)
    again.record_settle("0xtx2", 7, 30_000)
    [earned] = again.earnings()
    assert (earned.charged, earned.claimed, earned.settled, earned.unclaimed) == (7, 7, 7, 0)
    assert again.claim_candidates() == []
    book.close()
    again.close()


def test_threads_race_on_one_channel(ledger: SqliteLedger) -> None:
    """50 threads offer the same next voucher at once: exactly one holds the channel."""
    wins: list[str] = []
    refusals: list[str] = []
    barrier = threading.Barrier(50)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            ledger.accept_voucher(f"r{i}", CID, 100, "0xs", 100)
            wins.append(f"r{i}")
        except VoucherRefused as exc:
            refusals.append(exc.reason)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(refusals) == 49
    assert set(refusals) == {"busy"}
    ch = ledger.channel(CID)
    assert ch is not None and ch.pending_request == wins[0]


def test_running_receipts_charge_a_broken_stream(ledger: SqliteLedger) -> None:
    ledger.commit(ledger.accept_voucher("r1", CID, 100, "0xs1", 100), 1, 1, 10, SIGNER.sign, 1)
    hold = ledger.accept_voucher("r2", CID, 110, "0xs2", 100)
    first = ledger.progress(hold, 5, 16, 21, SIGNER.sign, 1)
    second = ledger.progress(hold, 5, 32, 37, SIGNER.sign, 1)
    assert (first.cumulative, second.cumulative) == (31, 47)
    assert SIGNER.address == second.signer
    with pytest.raises(LedgerError, match="fall"):
        ledger.progress(hold, 5, 8, 13, SIGNER.sign, 1)
    # the stream breaks: the request costs its last running receipt, which is kept
    assert ledger.release(hold) == second
    ch = ledger.channel(CID)
    assert ch is not None and (ch.charged, ch.voucher_amount, ch.pending_request) == (
        47, 110, None)
    assert ledger.receipts(CID)[-1] == second
    assert ledger.release(hold) is None  # once
    with pytest.raises(LedgerError):
        ledger.progress(hold, 5, 48, 53, SIGNER.sign, 1)  # no longer held


def test_final_receipt_supersedes_running_ones(ledger: SqliteLedger) -> None:
    hold = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    ledger.progress(hold, 2, 16, 18, SIGNER.sign, 1)
    final = ledger.commit(hold, 2, 20, 500, SIGNER.sign, 1)
    assert (final.amount, final.tokens_out) == (100, 20)  # capped at the hold's maximum
    assert ledger.receipts(CID) == [final]
    assert ledger._read("SELECT COUNT(*) FROM running_receipts")[0][0] == 0
    assert ledger.release(hold) is None  # already charged: nothing changes
    assert ledger.channel(CID).charged == 100  # type: ignore[union-attr]


def test_recover_charges_the_last_running_receipt(ledgers: Ledgers) -> None:
    """A node killed mid-stream is paid, after its restart, what it had receipted."""
    book = ledgers.open()
    book.ensure_channel(CID, "{}", "0xp", 0)
    hold = book.accept_voucher("a", CID, 100, "0xa", 100)
    sent = book.progress(hold, 3, 16, 19, SIGNER.sign, 1)
    ledgers.crash(book)
    again = ledgers.open()  # as after SIGKILL: no close()
    assert again.recover() == 1
    assert again.receipts(CID) == [sent]
    [candidate] = again.claim_candidates()
    assert (candidate.unclaimed, candidate.voucher_amount) == (19, 100)
    book.close()
    again.close()


def _a_real_ledger(path: Path) -> None:
    book = SqliteLedger(path)
    with book._write() as db:  # enough rows for several pages, in one transaction
        for i in range(200):
            db.execute("INSERT INTO channels VALUES (?, '{}', '0xp', 0, 0, '0x', 0, NULL, 0)",
                       (f"0x{i:064x}",))
    book.commit(book.accept_voucher("a", "0x" + "00" * 32, 100, "0xa", 100), 1, 1, 7,
                SIGNER.sign, 1)
    book.close()


def _truncated(path: Path) -> None:
    _a_real_ledger(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign(path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.commit()
    db.close()


@pytest.mark.parametrize(("damage", "needle"), [
    (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    (lambda p: p.write_bytes(b"not a database at all " * 300), "not a database"),
    (_truncated, "malformed"),
    (_foreign, "not an agoranet ledger"),
])
def test_a_damaged_ledger_is_refused_never_replaced(tmp_path: Path, damage: object,
                                                    needle: str) -> None:
    """#12: a 0-byte, corrupt or foreign file is not a fresh ledger: LedgerError, file kept."""
    path = tmp_path / "ledger.sqlite"
    damage(path)  # type: ignore[operator]
    before = path.read_bytes()
    with pytest.raises(LedgerError, match="ledger") as info:
        SqliteLedger(path)
    assert needle in str(info.value)
    assert path.read_bytes() == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite"]


def test_a_new_path_gets_a_new_ledger_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "ledger.sqlite"
    book = SqliteLedger(path)
    book.ensure_channel(CID, "{}", "0xp", 0)
    book.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["ledger.sqlite"]  # no leftovers
    again = SqliteLedger(path)
    assert again.channel(CID) is not None
    again.close()


def test_an_older_ledger_gains_the_claim_failures_table(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _a_real_ledger(path)
    with SqliteLedger(path)._write() as db:
        db.execute("DROP TABLE claim_failures")
    book = SqliteLedger(path)
    assert book.claim_failures() == []
    assert len(book.earnings()) == 200


def test_a_ledger_missing_next_to_its_write_ahead_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    book = SqliteLedger(path)
    book.ensure_channel(CID, "{}", "0xp", 0)  # no close(): the WAL holds this write
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 0
    path.unlink()
    with pytest.raises(LedgerError, match="write-ahead log"):
        SqliteLedger(path)
    assert not path.exists()
    book.close()
