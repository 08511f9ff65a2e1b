"""Retracting a hold (a request refused before it was served, for a fault of its own, or
whose client went away) undoes it as if its voucher had never been offered: no voucher
row, the previous voucher current again, and a channel row made for it alone gone too. A
request that sent a running receipt was served in part and is released instead (charged
that receipt); a request charged, released or never held is left alone.

The same protocol-level tests run against SQLite and PostgreSQL (``ledgers``)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account

from agoranet.payments.accept.ledger import Hold
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import Ledgers

CID = "0x" + "11" * 32
SIGNER = ReceiptSigner(bytes(Account.create().key))


def _state(ledger: Any) -> tuple[int, int, str, str | None] | None:
    ch = ledger.channel(CID)
    return None if ch is None else (ch.charged, ch.voucher_amount, ch.voucher_signature,
                                    ch.pending_request)


def test_a_retracted_first_voucher_leaves_no_channel_behind(ledgers: Ledgers) -> None:
    ledger = ledgers.open()
    ledger.ensure_channel(CID, "{}", "0xpayer", 40)  # made for this request alone
    hold = ledger.accept_voucher("r1", CID, 140, "0xs1", 100)
    assert _state(ledger) == (40, 140, "0xs1", "r1")
    ledger.retract(hold)
    assert _state(ledger) is None and ledger.receipts(CID) == []
    assert ledger.claim_candidates() == [] and ledger.recover() == 0
    # the channel comes back as new: the same request id and voucher are taken again
    ledger.ensure_channel(CID, "{}", "0xpayer", 40)
    again = ledger.accept_voucher("r1", CID, 140, "0xs1", 100)
    receipt = ledger.commit(again, 1, 1, 30, SIGNER.sign, 31337)
    assert receipt.cumulative == 70 and _state(ledger) == (70, 140, "0xs1", None)


def test_a_retracted_voucher_on_a_used_channel_puts_the_previous_one_back(
        ledgers: Ledgers) -> None:
    ledger = ledgers.open()
    ledger.ensure_channel(CID, "{}", "0xpayer", 0)
    first = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    ledger.commit(first, 1, 1, 30, SIGNER.sign, 31337)
    hold = ledger.accept_voucher("r2", CID, 130, "0xs2", 100)
    ledger.retract(hold)
    assert _state(ledger) == (30, 100, "0xs1", None)  # charged kept, r1's voucher current
    assert [r.request_id for r in ledger.receipts(CID)] == ["r1"]
    ledger.retract(hold)  # twice: nothing more
    ledger.retract(first)  # a charged request: nothing
    assert _state(ledger) == (30, 100, "0xs1", None)
    assert ledger.release(hold) is None  # nothing held: nothing to release either
    assert ledger.recover() == 0
    # the retracted request id is free again, for the same voucher
    again = ledger.accept_voucher("r2", CID, 130, "0xs2", 100)
    assert ledger.commit(again, 1, 1, 50, SIGNER.sign, 31337).cumulative == 80
    assert [c.channel_id for c in ledger.claim_candidates()] == [CID]


def test_a_retracted_request_that_sent_a_running_receipt_is_charged_it(
        ledgers: Ledgers) -> None:
    ledger = ledgers.open()
    ledger.ensure_channel(CID, "{}", "0xpayer", 0)
    hold = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    running = ledger.progress(hold, 3, 4, 21, SIGNER.sign, 31337)
    ledger.retract(hold)  # it was served in part: released, charged what it receipted
    assert _state(ledger) == (21, 100, "0xs1", None)
    assert ledger.receipts(CID) == [running]


@pytest.mark.parametrize("request_id", ["never", "r1"])
def test_retracting_what_is_not_held_changes_nothing(ledgers: Ledgers,
                                                     request_id: str) -> None:
    ledger = ledgers.open()
    ledger.ensure_channel(CID, "{}", "0xpayer", 0)
    hold = ledger.accept_voucher("r1", CID, 100, "0xs1", 100)
    ledger.release(hold)
    ledger.retract(Hold(request_id, CID, 100, 100, 0))  # released, or never held
    assert _state(ledger) == (0, 0, "0x", None)
    assert ledger.channel(CID) is not None  # a released voucher's row keeps the channel
