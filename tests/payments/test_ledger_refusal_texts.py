"""What a refused voucher or charge says, on either ledger: the message names the channel
or the request, and a repeated request's refusal carries the channel's state and the
receipt it was charged with (for the corrective 402); a hold is charged only while it
holds its own channel."""

from __future__ import annotations

import pytest
from eth_account import Account

from agoranet.errors import LedgerError
from agoranet.payments.accept.ledger import Hold, VoucherRefused
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import Ledgers

CID, OTHER = "0x" + "13" * 32, "0x" + "14" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


def test_an_unknown_channel_and_a_served_request_are_refused_saying_why(
        ledgers: Ledgers) -> None:
    book = ledgers.open()
    book.ensure_channel(CID, "{}", "0xpayer", 0)
    with pytest.raises(VoucherRefused) as unknown:
        book.accept_voucher("r1", OTHER, 100, "0xs1", 100)
    assert (unknown.value.reason, str(unknown.value)) == (
        "unknown-channel", f"channel {OTHER} is not known")
    receipt = book.commit(book.accept_voucher("r1", CID, 100, "0xs1", 100), 1, 1, 30,
                          SIGNER.sign, 1)
    with pytest.raises(VoucherRefused) as served:  # the same request again
        book.accept_voucher("r1", CID, 130, "0xs2", 100)
    assert (served.value.reason, str(served.value)) == (
        "charged", "request r1 was already served and charged")
    assert served.value.receipt == receipt
    assert served.value.channel == book.channel(CID)
    assert served.value.channel is not None and served.value.channel.charged == 30


def test_a_request_no_longer_held_is_charged_no_more(ledgers: Ledgers) -> None:
    book = ledgers.open()
    book.ensure_channel(CID, "{}", "0xpayer", 0)
    book.ensure_channel(OTHER, "{}", "0xpayer", 0)
    hold = book.accept_voucher("r1", CID, 100, "0xs1", 100)
    wrong = Hold("r1", OTHER, hold.voucher_amount, hold.max_amount, hold.charged_before)
    with pytest.raises(LedgerError, match=r"^request r1 holds no voucher to charge$"):
        book.progress(wrong, 1, 1, 10, SIGNER.sign, 1)  # not the channel it holds
    book.commit(hold, 1, 1, 10, SIGNER.sign, 1)
    with pytest.raises(LedgerError, match=r"^request r1 holds no voucher to charge$"):
        book.progress(hold, 1, 2, 20, SIGNER.sign, 1)  # charged already
    assert book.channel(CID).charged == 10 and book.channel(OTHER).charged == 0
    assert [r.amount for r in book.receipts()] == [10]


def test_a_hold_says_what_it_holds_and_a_busy_or_mismatched_voucher_shows_the_channel(
        ledgers: Ledgers) -> None:
    book = ledgers.open()
    book.ensure_channel(CID, "{}", "0xpayer", 0)
    book.commit(book.accept_voucher("r0", CID, 100, "0xs0", 100), 1, 1, 30, SIGNER.sign, 1)
    hold = book.accept_voucher("r1", CID, 130, "0xs1", 100)
    assert hold == Hold("r1", CID, 130, 100, 30)
    with pytest.raises(VoucherRefused) as busy:
        book.accept_voucher("r2", CID, 130, "0xs2", 100)
    assert busy.value.reason == "busy" and busy.value.channel == book.channel(CID)
    assert str(busy.value) == ("the channel is serving another request; retry when it has "
                               "finished")
    book.commit(hold, 1, 1, 20, SIGNER.sign, 1)
    with pytest.raises(VoucherRefused) as mismatch:
        book.accept_voucher("r2", CID, 120, "0xs2", 100)
    assert mismatch.value.reason == "mismatch" and mismatch.value.channel == book.channel(CID)
    assert str(mismatch.value) == ("voucher for 120 does not equal charged (50) plus this "
                                   "request's maximum (100) = 150")
    assert mismatch.value.receipt is not None and mismatch.value.receipt.cumulative == 50
