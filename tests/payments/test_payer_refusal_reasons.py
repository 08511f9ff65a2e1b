"""Each receipt check of :meth:`Payer.check` refuses with its own exact reason, marks the
request's payment refused in the store (so no receipt of it is believed later, not even from
a corrective 402) and changes nothing the payer owes or spent; an honest receipt passes
every check. The payer's logic on its real store, without a node or a chain (the same lies
told by a served node: test_receipt_checks.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agoranet.errors import ReceiptError
from agoranet.payments.pay.payer import ChannelState, Payer, PendingPayment
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.registry.offer import ModelOffer, Offer, Price

CID = "0x" + "ef" * 32
NODE = ReceiptSigner(bytes(Account.create().key))
OTHER = ReceiptSigner(bytes(Account.create().key))
BEFORE, MAX = 13_000, 50_000
PENDING = PendingPayment("r1", MAX, BEFORE + MAX, BEFORE, "header")
# 3 prompt tokens at 10, 4 answer tokens at 2000
HONEST = Receipt("r1", CID, 3, 4, 8_030, BEFORE + 8_030, 31337)


def _payer(tmp_path: Path) -> Payer:
    p = object.__new__(Payer)
    p.root, p.node, p.chain_id, p._store = "http://node", NODE.address, 31337, PayerStore(tmp_path)
    p.offer = Offer(engine="hf", models=[ModelOffer(
        id="cheap", context_length=512,
        price=Price(input_per_million=10_000_000, output_per_million=2_000_000_000))])
    p.on_resync = p.on_dispute = None
    p.state = ChannelState(CID, {}, deposited=1_000_000, charged=BEFORE, voucher=BEFORE + MAX,
                           receipts=2, spent=BEFORE, payments={"r1": [MAX, BEFORE, 0, 0]})
    p._save()  # as saved before the voucher left
    return p


def _response(receipt: Receipt, charged: int | None = None) -> dict[str, Any]:
    return {"extra": {"receipt": receipt.to_json(),
                      "chargedAmount": str(receipt.amount if charged is None else charged)}}


def _lie(**changes: Any) -> Receipt:
    return NODE.sign(dataclasses.replace(HONEST, **changes))


CASES: dict[str, tuple[Receipt, dict[str, Any], str]] = {
    "request": (_lie(request_id="r2"), {}, "receipt r2 is for another request"),
    "channel": (_lie(channel_id="0x" + "ab" * 32), {}, "receipt r1 is for another channel"),
    "chain": (_lie(chain_id=31338), {}, "receipt r1 is for another chain"),
    "charged-amount": (_lie(), {"charged": 8_031}, "receipt r1 disagrees with chargedAmount"),
    "price": (_lie(tokens_out=5), {}, "receipt r1 charges 8030, the tokens cost 10030"),
    "cumulative": (_lie(cumulative=BEFORE + 8_031), {},
                   "receipt r1 has a cumulative out of step"),
    "max-tokens": (_lie(), {"max_tokens": 3}, "receipt r1 counts more tokens than max_tokens"),
    "fewer-than-received": (_lie(), {"min_tokens_out": 5},
                            "receipt r1 counts fewer tokens than were received"),
    "more-than-arrived": (_lie(), {"max_tokens_out": 3},
                          "receipt r1 counts more tokens than have arrived"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_refusal_says_exactly_why_and_is_remembered(name: str, tmp_path: Path) -> None:
    receipt, given, why = CASES[name]
    terms = dict(given)  # the case stays as it is for another run
    charged = terms.pop("charged", None)
    p = _payer(tmp_path)
    with pytest.raises(ReceiptError) as refused:
        p.check(PENDING, _response(receipt, charged), "cheap", **terms)
    assert str(refused.value) == why
    data = PayerStore(tmp_path).load()
    assert data is not None  # refused, and saved so: believed never after
    assert (data["charged"], data["spent"], data["receipts"]) == (BEFORE, BEFORE, 2)
    assert data["payments"]["r1"] == [MAX, BEFORE, 0, 1]


def test_a_receipt_above_the_voucher_is_refused_for_that(tmp_path: Path) -> None:
    small = PendingPayment("r1", 8_000, BEFORE + 8_000, BEFORE, "header")
    p = _payer(tmp_path)
    with pytest.raises(ReceiptError) as refused:
        p.check(small, _response(_lie()), "cheap")
    assert str(refused.value) == "receipt r1 charges more than the voucher allowed"


def test_a_receipt_signed_by_another_key_is_refused_naming_both(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    with pytest.raises(ReceiptError) as refused:
        p.check(PENDING, _response(OTHER.sign(HONEST)), "cheap")
    assert str(refused.value) == f"receipt r1 is signed by {OTHER.address}, not {NODE.address}"
    data = PayerStore(tmp_path).load()
    assert data is not None and data["payments"]["r1"] == [MAX, BEFORE, 0, 1]


def test_an_honest_receipt_passes_every_check_and_nothing_is_marked(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    signed = NODE.sign(HONEST)
    assert p.check(PENDING, _response(signed), "cheap", max_tokens=4, min_tokens_out=4,
                   max_tokens_out=4) == signed
    assert p.state is not None and p.state.payments["r1"] == [MAX, BEFORE, 0, 0]
    assert p.state.charged == BEFORE  # checked, not adopted yet
