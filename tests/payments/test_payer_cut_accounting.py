"""The payer's books for a stream cut before its final receipt (:meth:`Payer.cut`), on its
real store, without a node or a chain: the last running receipt is what it owes; what
the tokens after it cost is spent, not owed, and remembered for the request; a receipt
for that request shown later in a corrective 402 counts only the rest, and a dispute's
exposure leaves out what was counted already."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agoranet.errors import ChargeDisputeError
from agoranet.payments.pay.payer import ChannelState, Payer, PendingPayment
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.registry.offer import ModelOffer, Offer, Price

CID = "0x" + "cd" * 32
NODE = ReceiptSigner(bytes(Account.create().key))
BEFORE, MAX = 13_000, 50_000


def _payer(tmp_path: Path) -> Payer:
    p = object.__new__(Payer)
    p.root, p.node, p.chain_id, p._store = "http://node", NODE.address, 31337, PayerStore(tmp_path)
    p.offer = Offer(engine="hf", models=[ModelOffer(
        id="tiny", context_length=512,
        price=Price(input_per_million=1_000_000_000, output_per_million=2_000_000_000))])
    p.on_resync = p.on_dispute = None
    p.state = ChannelState(CID, {}, deposited=1_000_000, charged=BEFORE, voucher=BEFORE + MAX,
                           receipts=2, spent=BEFORE, payments={"r1": [MAX, BEFORE, 0, 0]})
    return p


PENDING = PendingPayment("r1", MAX, BEFORE + MAX, BEFORE, "header")


def _receipt(tokens_out: int) -> Receipt:
    amount = 3 * 1000 + tokens_out * 2000
    return NODE.sign(Receipt("r1", CID, 3, tokens_out, amount, BEFORE + amount, 31337))


def _corrective(receipt: Receipt | None, charged: int) -> dict[str, Any]:
    extra: dict[str, Any] = {"channelState": {"channelId": CID,
                                              "chargedCumulativeAmount": str(charged)}}
    if receipt is not None:
        extra["receipt"] = receipt.to_json()
    return extra


def test_the_running_receipt_is_owed_and_the_tokens_after_it_spent(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    held = _receipt(4)
    assert p.cut(PENDING, held, "tiny", arrived=10, max_tokens=12) == 6 * 2000
    assert p.state is not None
    assert (p.state.charged, p.state.spent, p.state.receipts) == \
        (BEFORE + held.amount, BEFORE + held.amount + 12_000, 3)
    assert p.state.payments == {"r1": [MAX, BEFORE, held.amount, 0]}
    assert p.state.unreceipted == {"r1": 12_000}
    saved = PayerStore(tmp_path).load()
    assert saved is not None and saved["unreceipted"] == {"r1": 12_000}
    assert p.receipts() == [held]


def test_nothing_arrived_after_the_receipt_nothing_more_is_spent(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    held = _receipt(8)
    assert p.cut(PENDING, held, "tiny", arrived=8) == 0
    assert p.state is not None and p.state.spent == BEFORE + held.amount
    assert p.state.unreceipted == {}


def test_a_model_without_a_price_counts_all_the_voucher_allows(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    assert p.cut(PENDING, None, "other", arrived=1) == MAX
    assert p.state is not None and p.state.charged == BEFORE and p.state.spent == BEFORE + MAX


def test_the_receipt_in_a_corrective_402_counts_only_what_was_not_counted(
        tmp_path: Path) -> None:
    p = _payer(tmp_path)
    p.cut(PENDING, _receipt(4), "tiny", arrived=10)  # 12,000 counted beyond the receipt
    told: list[int] = []
    p.on_resync = lambda receipt, counted: told.append(counted)
    recorded = _receipt(8)  # the node recorded this one and never sent it
    assert p.resync(_corrective(recorded, BEFORE + recorded.amount)) is True
    assert p.state is not None
    assert p.state.charged == BEFORE + recorded.amount  # owed now: a receipt backs it
    assert p.state.spent == BEFORE + _receipt(10).amount and told == [0]
    assert p.state.unreceipted == {}
    # a receipt beyond what was counted adds only the difference
    q = _payer(tmp_path / "q")
    q.cut(PENDING, _receipt(4), "tiny", arrived=5)  # 2,000 counted
    q.on_resync = lambda receipt, counted: told.append(counted)
    assert q.resync(_corrective(recorded, BEFORE + recorded.amount)) is True
    assert q.state is not None and q.state.spent == BEFORE + recorded.amount
    assert told == [0, 8_000 - 2_000]


def test_a_dispute_leaves_out_what_cut_streams_counted(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    held = _receipt(4)
    p.cut(PENDING, held, "tiny", arrived=10)
    with pytest.raises(ChargeDisputeError):
        p.resync(_corrective(None, BEFORE + MAX))
    assert p.state is not None
    assert p.state.disputed == MAX - held.amount - 12_000
    assert p.state.spent == BEFORE + MAX  # every unit the node can claim, counted once
