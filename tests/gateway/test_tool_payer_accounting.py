"""The tool payer's accounting and refusals, exactly: what a dispute and a resynced receipt
cost, where they are written, and what each refusal of a receipt or an offer says.

In process, no chain: a :class:`ToolPayers` with a real budget, spend log and reputation
store (its channels are never opened here), and a :class:`ToolPayer` over a channel state
set by hand, the seller's receipts signed with its real key (as test_tool_payer.py).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from test_tool_payer import ADDRESSES, CHANNEL, SELLER, _offer, _payer, _response
from web3 import Web3

from agoranet.errors import PaymentError, ReceiptError
from agoranet.gateway.budget import Budget
from agoranet.gateway.reputation import EventKind, Reputation
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.gateway.tool_directory import ToolSeller
from agoranet.gateway.tool_payer import ToolPayer, ToolPayers
from agoranet.payments.pay.payer import Dispute
from agoranet.payments.receipts import Receipt, ReceiptSigner

CHEAT_CHANNEL = "0x" + "ab" * 32


def _payers(tmp_path: Path, budget: Budget, spend: SpendLog,
            reputation: Reputation | None = None) -> ToolPayers:
    return ToolPayers("http://unused", Account.create(), tmp_path / "channels", 10_000,
                      budget, spend, reputation=reputation)


def test_a_sellers_dispute_is_spent_logged_and_banned(tmp_path: Path) -> None:
    store = Reputation(tmp_path / "reputation.sqlite")
    spend = SpendLog(tmp_path / "spend.sqlite")
    budget = Budget(100_000, spent=1_000)
    payers = _payers(tmp_path, budget, spend, store)
    seller = ToolSeller("http://cheat.test", _offer())
    dispute = Dispute("http://cheat.test", SELLER.address, CHEAT_CHANNEL, claimed=40_000,
                      receipted=9_000, exposure=20_000)
    payers._disputed(seller, dispute)
    assert budget.spent == 21_000 and budget.reserved == 0 and spend.total() == 20_000
    assert spend.rows() == [SpendRow(f"dispute-{CHEAT_CHANNEL}", "", "http://cheat.test", 0,
                                     0, 20_000, None, 0.0, "disputed")]
    assert seller.events == [f"dispute: {dispute.describe()}"]
    record = store.record(seller.identity)
    assert (record.disputes, record.receipts, record.url) == (1, 1, "http://cheat.test")
    assert store.ban(seller.identity, seller.root) is not None
    store.close()
    with sqlite3.connect(tmp_path / "reputation.sqlite") as db:  # what the ban is for
        details = db.execute("SELECT detail FROM events WHERE kind = ?",
                             (str(EventKind.DISPUTE),)).fetchall()
    assert details == [(dispute.describe(),)]
    spend.close()


def test_a_resynced_receipt_is_spent_and_logged_with_the_receipt(tmp_path: Path) -> None:
    spend = SpendLog(tmp_path / "spend.sqlite")
    budget = Budget(50_000, spent=1_000)
    payers = _payers(tmp_path, budget, spend)
    seller = ToolSeller("http://seller.test", _offer())
    receipt = ReceiptSigner(bytes(SELLER.key)).sign(
        Receipt("call-9", CHANNEL, 1, 0, 3_000, 8_000, 31337))
    payers._resynced(seller, receipt, 3_000)
    assert budget.spent == 4_000 and budget.reserved == 0 and spend.total() == 3_000
    (row,) = spend.rows()
    assert row == SpendRow("call-9", "", "http://seller.test", 0, 0, 3_000, None, 0.0,
                           "resynced", row.receipt)
    assert row.receipt is not None and Receipt.from_json(json.loads(row.receipt)) == receipt
    spend.close()


@pytest.mark.parametrize(("case", "why"), [
    ("other_request", "receipt seller-own-id is for another request"),
    ("other_channel", "receipt call-1 is for another channel"),
    ("other_chain", "receipt call-1 is for another chain"),
    ("charged_disagrees", "receipt call-1 disagrees with chargedAmount"),
    ("above_voucher", "receipt call-1 charges more than the voucher allowed"),
    ("less_than_price", "receipt call-1 charges 999, the call costs 1000"),
    ("cumulative_behind", "receipt call-1 has a cumulative out of step"),
    ("no_receipt", "the tool server's payment response has no receipt: 'receipt'"),
])
def test_a_refused_receipt_says_why(case: str, why: str, tmp_path: Path) -> None:
    payer = _payer(tmp_path)
    pending = payer.pay(1000, "call-1")
    price = 1000
    response: dict[str, Any] = {
        "other_request": lambda: _response(1000, 6000, request_id="seller-own-id"),
        "other_channel": lambda: _response(1000, 6000, channel="0x" + "cd" * 32),
        "other_chain": lambda: _response(1000, 6000, chain_id=1),
        "charged_disagrees": lambda: _response(1000, 6000, charged=999),
        "above_voucher": lambda: _response(200_000, 205_000),
        "less_than_price": lambda: _response(999, 5999),
        "cumulative_behind": lambda: _response(1000, 5999),
        "no_receipt": lambda: {"extra": {}},
    }[case]()
    if case == "above_voucher":
        price = 200_000
    with pytest.raises(ReceiptError) as refused:
        payer.check_call(pending, response, price)
    assert str(refused.value) == why
    payer.close()


@pytest.mark.parametrize(("terms", "why"), [
    ({"schemes": ["exact"]},
     "the tool server at http://seller.test takes no batch-settlement payment"),
    ({"asset": "0x" + "99" * 20}, f"the tool server wants token {'0x' + '99' * 20}, not ours"),
])
def test_an_offer_it_cannot_pay_says_why(terms: dict[str, Any], why: str,
                                         tmp_path: Path) -> None:
    with pytest.raises(PaymentError) as refused:
        ToolPayer(_offer(**terms), Web3(), ADDRESSES, account=Account.create(),
                  state_dir=tmp_path / "payer")
    assert str(refused.value) == why


def test_a_tool_payer_pays_with_its_terms_and_tops_up_as_told(tmp_path: Path) -> None:
    w3 = Web3()
    offer = _offer()
    plain = ToolPayer(offer, w3, ADDRESSES, account=Account.create(), state_dir=tmp_path / "a")
    topped = ToolPayer(offer, w3, ADDRESSES, account=Account.create(),
                       state_dir=tmp_path / "b", top_up=7_000)
    assert plain.top_up_amount == 0 and topped.top_up_amount == 7_000
    assert plain.w3 is w3 and plain.tool_offer == offer
    assert plain.offer.engine == "tools" and plain.offer.models == []
    assert plain.offer.payment == offer.payment
    plain.close()
    topped.close()
