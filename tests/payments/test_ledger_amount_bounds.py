"""The node's ledger takes only amounts it can store exactly (0 to 2**63 - 1 base units):
a negative voucher, maximum, charge or baseline is refused before anything is written, as
is one past the bound, while the bound itself is a valid amount. Refusals carry their
reason in the message the node puts in its 402."""

from __future__ import annotations

import pytest
from eth_account import Account

from agoranet.errors import LedgerError
from agoranet.payments.accept.ledger import MAX_AMOUNT, VoucherRefused
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import Ledgers

CID = "0x" + "11" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


@pytest.fixture
def ledger(ledgers: Ledgers) -> SqliteLedger:
    book: SqliteLedger = ledgers.open()  # SQLite, then PostgreSQL: the same protocol
    book.ensure_channel(CID, "{}", "0xpayer", 0)
    return book


@pytest.mark.parametrize(
    ("voucher", "maximum", "refused"),
    [(-5, -5, "voucher amount -5 is out of range"),
     (0, -5, "request maximum -5 is out of range"),
     (MAX_AMOUNT + 1, MAX_AMOUNT + 1, f"voucher amount {MAX_AMOUNT + 1} is out of range"),
     (MAX_AMOUNT, MAX_AMOUNT + 1, f"request maximum {MAX_AMOUNT + 1} is out of range")],
)  # fmt: skip
def test_a_voucher_outside_the_storable_range_is_refused_unwritten(
        ledger: SqliteLedger, voucher: int, maximum: int, refused: str) -> None:
    with pytest.raises(LedgerError, match=f"^{refused}$"):
        ledger.accept_voucher("r1", CID, voucher, "0xs", maximum)
    ch = ledger.channel(CID)
    assert ch is not None and (ch.charged, ch.voucher_amount, ch.pending_request) == (0, 0, None)


def test_the_largest_storable_amount_is_a_valid_voucher_and_charge(ledger: SqliteLedger) -> None:
    hold = ledger.accept_voucher("r1", CID, MAX_AMOUNT, "0xs", MAX_AMOUNT)
    receipt = ledger.commit(hold, 1, 1, MAX_AMOUNT, SIGNER.sign, 31337)
    assert receipt.amount == receipt.cumulative == MAX_AMOUNT
    assert ledger.channel(CID).charged == MAX_AMOUNT  # type: ignore[union-attr]


def test_a_negative_charge_is_refused_and_the_hold_stays(ledger: SqliteLedger) -> None:
    hold = ledger.accept_voucher("r1", CID, 100, "0xs", 100)
    for charge in (-1, MAX_AMOUNT + 1):
        with pytest.raises(LedgerError, match=f"^charge {charge} is out of range$"):
            ledger.commit(hold, 1, 1, charge, SIGNER.sign, 31337)
        with pytest.raises(LedgerError, match=f"^charge {charge} is out of range$"):
            ledger.progress(hold, 1, 1, charge, SIGNER.sign, 31337)
    ch = ledger.channel(CID)
    assert ch is not None and (ch.charged, ch.pending_request) == (0, "r1")
    assert ledger.receipts(CID) == []


def test_a_negative_baseline_is_refused(ledgers: Ledgers) -> None:
    book = ledgers.open()
    with pytest.raises(LedgerError, match=r"^baseline -1 is out of range$"):
        book.ensure_channel(CID, "{}", "0xpayer", -1)
    assert book.channel(CID) is None


def test_a_refusal_says_why_in_its_message(ledger: SqliteLedger) -> None:
    ledger.accept_voucher("r1", CID, 100, "0xs", 100)
    with pytest.raises(VoucherRefused) as busy:
        ledger.accept_voucher("r2", CID, 100, "0xs", 100)
    assert busy.value.reason == "busy"
    assert str(busy.value) == ("the channel is serving another request; retry when it has "
                               "finished")
