"""The node's ledger at the edges of a request's life and of a claim's: releasing a request
that was already charged (or never held) changes nothing; a running receipt may repeat the
last amount; a mismatched voucher is answered with the receipt that backs the charged
total; a failing claim is recorded against its channel, counted, its first failure kept;
gas is totalled per transaction."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from eth_account import Account

from agoranet.errors import LedgerError
from agoranet.payments.accept.ledger import Hold, VoucherRefused
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import Ledgers

CID = "0x" + "11" * 32
OTHER = "0x" + "22" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


@pytest.fixture
def ledger(ledgers: Ledgers) -> SqliteLedger:
    book: SqliteLedger = ledgers.open()  # SQLite, then PostgreSQL: the same protocol
    book.ensure_channel(CID, "{}", "0xpayer", 0)
    book.ensure_channel(OTHER, "{}", "0xpayer", 0)
    return book


def _state(ledger: SqliteLedger) -> tuple[int, int, str, str | None]:
    ch = ledger.channel(CID)
    assert ch is not None
    return ch.charged, ch.voucher_amount, ch.voucher_signature, ch.pending_request


def test_releasing_a_request_already_charged_changes_nothing(ledger: SqliteLedger) -> None:
    hold = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    ledger.commit(hold, 1, 1, 30, SIGNER.sign, 31337)
    after_commit = _state(ledger)
    assert after_commit == (30, 100, "0xs1", None)
    assert ledger.release(hold) is None  # e.g. the client hung up after the final receipt
    assert _state(ledger) == after_commit
    assert ledger.recover() == 0 and _state(ledger) == after_commit


def test_releasing_a_request_never_held_changes_nothing(ledger: SqliteLedger) -> None:
    hold = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    ledger.commit(hold, 1, 1, 30, SIGNER.sign, 31337)
    assert ledger.release(Hold("never", CID, 130, 100, 30)) is None
    assert _state(ledger) == (30, 100, "0xs1", None)


def test_a_running_receipt_may_repeat_the_last_amount(ledger: SqliteLedger) -> None:
    hold = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    first = ledger.progress(hold, 5, 8, 21, SIGNER.sign, 1)
    again = ledger.progress(hold, 5, 9, 21, SIGNER.sign, 1)  # one more token, same cost
    assert (first.amount, again.amount, again.tokens_out) == (21, 21, 9)
    assert ledger.release(hold) == again
    assert _state(ledger)[0] == 21


def test_a_mismatched_voucher_is_answered_with_the_receipt_behind_the_total(
        ledger: SqliteLedger) -> None:
    with pytest.raises(VoucherRefused) as fresh:
        ledger.accept_voucher("r0", CID, 999, "0xs0", 100)
    assert fresh.value.reason == "mismatch" and fresh.value.receipt is None
    first = ledger.commit(ledger.accept_voucher("r1", CID, 100, "0xs1", 100), 1, 1, 30,
                          SIGNER.sign, 1)
    second = ledger.commit(ledger.accept_voucher("r2", CID, 130, "0xs2", 100), 1, 1, 20,
                           SIGNER.sign, 1)
    ledger.commit(ledger.accept_voucher("o1", OTHER, 100, "0xo1", 100), 1, 1, 90, SIGNER.sign, 1)
    with pytest.raises(VoucherRefused) as mismatch:
        ledger.accept_voucher("r3", CID, 10, "0xs3", 100)
    assert mismatch.value.reason == "mismatch"
    assert mismatch.value.receipt == second != first
    assert mismatch.value.channel is not None and mismatch.value.channel.charged == 50


def test_a_failing_claim_is_recorded_against_its_channel(ledger: SqliteLedger) -> None:
    def backoff(failures: int) -> float:
        return 10.0 * failures

    first = ledger.record_claim_failure(CID.upper().replace("0X", "0x"), "reverted", 1000.0,
                                        backoff)
    assert (first.channel_id, first.failures, first.last_error, first.first_failed_at,
            first.retry_at) == (CID, 1, "reverted", 1000.0, 1010.0)
    second = ledger.record_claim_failure(CID, "x" * 600, 2000.0, backoff)
    assert (second.channel_id, second.failures, second.first_failed_at, second.retry_at) == (
        CID, 2, 1000.0, 2020.0)
    assert second.last_error == "x" * 500  # a long error is cut, not refused
    assert ledger.claim_failures() == [second]


def test_gas_is_totalled_once_per_transaction(ledger: SqliteLedger) -> None:
    assert ledger.gas_used() == (0, 0)
    for cid, request in ((CID, "r1"), (OTHER, "o1")):
        ledger.commit(ledger.accept_voucher(request, cid, 100, "0xs", 100), 1, 1, 40,
                      SIGNER.sign, 1)
    ledger.record_claim({CID: 40, OTHER: 40}, "0xclaim", 50_000)  # both in one transaction
    ledger.record_settle("0xsettle", 80, 30_000)
    assert ledger.gas_used() == (2, 80_000)


def test_a_claim_total_must_fit_between_what_was_claimed_and_what_was_charged(
        ledger: SqliteLedger) -> None:
    ledger.commit(ledger.accept_voucher("r1", CID, 100, "0xs1", 100), 1, 1, 40, SIGNER.sign, 1)
    ledger.record_claim({CID: 25}, "0xc1", 1)
    for total in (41, 24):
        with pytest.raises(LedgerError, match=f"^claim total {total} does not fit channel"):
            ledger.record_claim({CID: total}, "0xbad", 1)
    with pytest.raises(LedgerError, match=r"^claim total 1 does not fit channel"):
        ledger.record_claim({"0x" + "99" * 32: 1}, "0xbad", 1)
    ledger.record_claim({CID: 25}, "0xc2", 1)  # the same total again (a repeated answer)
    ledger.record_claim({CID: 40}, "0xc3", 1)
    # what each claim moved on chain: 25, 0, 15 -- all of it waiting for a settle
    assert ledger.unsettled() == 40
    [earned] = [e for e in ledger.earnings() if e.channel_id == CID]
    assert (earned.claimed, earned.unclaimed) == (40, 0)


def test_a_new_channel_starts_at_its_baseline_with_no_voucher(ledger: SqliteLedger) -> None:
    fresh = ledger.ensure_channel("0x" + "33" * 32, '{"a": 1}', "0xp2", 70)
    assert (fresh.charged, fresh.claimed, fresh.voucher_amount, fresh.voucher_signature,
            fresh.pending_request, fresh.config) == (70, 70, 70, "0x", None, '{"a": 1}')
    # known already: the record as it is, whatever baseline is asked
    assert ledger.ensure_channel("0x" + "33" * 32, "{}", "0xother", 5) == fresh


def test_a_damaged_ledger_file_says_the_read_failed(tmp_path: Path) -> None:
    """Something else broke the ledger's file under the node (here: a table dropped): a read
    fails with a LedgerError that says what failed, not a bare SQLite error."""
    book = SqliteLedger(tmp_path / "ledger.sqlite")
    other = sqlite3.connect(tmp_path / "ledger.sqlite")
    other.execute("DROP TABLE claims")
    other.close()
    with pytest.raises(LedgerError, match=r"^ledger read failed: no such table: claims$"):
        book.unsettled()
    book.close()
