"""One request id, two channels (two buyers that chose the same ``x-request-id``): the
ledger refuses the second channel's voucher as ``request-id-in-use`` and tells it nothing
of the first channel; the first buyer's hold, charge and receipt stay its own, the second
channel is left idle (not busy) and unchanged. On its own channel a request id keeps its
rules: charged is ``charged`` (with its own receipt), released may be held again. Both
ledgers (SQLite, PostgreSQL), the second channel's voucher going through another
connection to the same store (another replica, for PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account

from agoranet.payments.accept.ledger import VoucherRefused
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import Ledgers

FIRST = "0x" + "a1" * 32  # the first buyer's channel
SECOND = "0x" + "b2" * 32  # another buyer's channel
SIGNER = ReceiptSigner(bytes(Account.create().key))
CHAIN = 31337


@pytest.fixture
def books(ledgers: Ledgers) -> tuple[Any, Any]:
    """Two connections to one store: the first buyer's node, the second buyer's."""
    one, two = ledgers.open(), ledgers.open()
    one.ensure_channel(FIRST, "{}", "0xfirst", 0)
    two.ensure_channel(SECOND, "{}", "0xsecond", 0)
    return one, two


def assert_books_balance(book: Any) -> None:
    """Per channel: its charged total is the sum of its receipts (each receipt on the
    channel it names), the voucher covers it, nothing claimed beyond it."""
    for channel_id in (FIRST, SECOND):
        ch = book.channel(channel_id)
        assert ch is not None
        receipts = book.receipts(channel_id)
        assert all(r.channel_id == channel_id for r in receipts)
        assert ch.charged == sum(r.amount for r in receipts)
        assert ch.claimed <= ch.charged <= ch.voucher_amount


def refused_in_use(book: Any, request_id: str = "shared") -> VoucherRefused:
    with pytest.raises(VoucherRefused) as refused:
        book.accept_voucher(request_id, SECOND, 100, "0xsecond-voucher", 100)
    exc = refused.value
    assert exc.reason == "request-id-in-use"
    assert exc.channel is None and exc.receipt is None  # nothing of the other channel
    assert str(exc) == (f"request id {request_id} is taken by a request on another channel: "
                        "choose another request id (one per request)")  # what the buyer reads
    assert FIRST not in str(exc)
    return exc


def assert_second_untouched(book: Any) -> None:
    ch = book.channel(SECOND)
    assert ch is not None
    assert (ch.charged, ch.voucher_amount, ch.voucher_signature, ch.pending_request) == \
        (0, 0, "0x", None)  # not held, not busy: its next request may come at once
    assert book.receipts(SECOND) == []


def test_a_request_id_held_on_another_channel_is_refused(books: tuple[Any, Any]) -> None:
    one, two = books
    hold = one.accept_voucher("shared", FIRST, 100, "0xfirst-voucher", 100)
    refused_in_use(two)
    assert_second_untouched(two)
    first = one.channel(FIRST)
    assert first is not None and first.pending_request == "shared"
    assert (first.voucher_amount, first.voucher_signature) == (100, "0xfirst-voucher")
    receipt = one.commit(hold, 3, 5, 40, SIGNER.sign, CHAIN)  # the first buyer's charge
    assert (receipt.request_id, receipt.channel_id, receipt.amount) == ("shared", FIRST, 40)
    assert one.channel(FIRST).charged == 40 and one.channel(FIRST).pending_request is None
    assert_second_untouched(two)
    # the second buyer names its request anew: served on its own channel at once
    other = two.accept_voucher("mine", SECOND, 100, "0xsecond-voucher", 100)
    assert two.commit(other, 1, 1, 25, SIGNER.sign, CHAIN).channel_id == SECOND
    assert one.receipts(FIRST) == [receipt]
    assert_books_balance(one)


def test_a_request_id_charged_on_another_channel_gives_away_nothing(
        books: tuple[Any, Any]) -> None:
    one, two = books
    receipt = one.commit(one.accept_voucher("shared", FIRST, 100, "0xfirst-voucher", 100),
                         3, 5, 40, SIGNER.sign, CHAIN)
    refused_in_use(two)  # not "charged" with the first buyer's receipt
    assert_second_untouched(two)
    assert one.receipts(FIRST) == [receipt]
    assert one.recover() == 0  # nothing was left held anywhere
    assert_books_balance(one)


def test_a_request_id_released_on_another_channel_stays_its_own(
        books: tuple[Any, Any]) -> None:
    one, two = books
    assert one.release(one.accept_voucher("shared", FIRST, 100, "0xfirst-voucher", 100)) is None
    refused_in_use(two)
    assert_second_untouched(two)
    # on its own channel the released request id may be held again, and charged
    again = one.accept_voucher("shared", FIRST, 100, "0xfirst-again", 100)
    assert one.commit(again, 1, 1, 30, SIGNER.sign, CHAIN).channel_id == FIRST
    assert_books_balance(one)


def test_on_its_own_channel_a_charged_request_id_is_refused_with_its_own_receipt(
        books: tuple[Any, Any]) -> None:
    one, two = books
    receipt = one.commit(one.accept_voucher("shared", FIRST, 100, "0xfirst-voucher", 100),
                         3, 5, 40, SIGNER.sign, CHAIN)
    with pytest.raises(VoucherRefused) as again:
        one.accept_voucher("shared", FIRST, 140, "0xfirst-again", 100)
    assert again.value.reason == "charged" and again.value.receipt == receipt
    refused_in_use(two)
    assert_second_untouched(two)
    assert_books_balance(one)
