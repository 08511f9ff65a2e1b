"""What the payer expects to pay and what it records once it believes a receipt.

Prices come from the node's signed offer: a request for ``model@adapter:<id>`` costs the base
price plus the offer's adapter surcharge on each side, one with commitments the commitment
price on top, and a model the node does not offer is refused by name. A receipt believed
raises the charged total to its cumulative, counts it once in receipts and spend, and
(for a final one) forgets the request's voucher; a stream's running receipt keeps it.
The payer's own logic on its real store, without a node or a chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agoranet.errors import PaymentError
from agoranet.market import TokenPrices
from agoranet.payments.pay.payer import ChannelState, Payer, PendingPayment
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.registry.offer import (
    AdapterTerms,
    CommitmentTerms,
    ModelOffer,
    Offer,
    Price,
)

CID = "0x" + "cd" * 32
NODE = ReceiptSigner(bytes(Account.create().key))
BEFORE, MAX = 13_000, 50_000


def _offer() -> Offer:
    return Offer(engine="hf", models=[
        ModelOffer(id="tiny", context_length=512, price=Price(input_per_million=1_000_000,
                                                              output_per_million=2_000_000),
                   adapters=AdapterTerms(accepted=True, surcharge=Price(
                       input_per_million=300_000, output_per_million=700_000)),
                   commitments=CommitmentTerms(offered=True, algorithm="x",
                                               price_per_million=50_000)),
        ModelOffer(id="plain", context_length=512, price=Price(input_per_million=5,
                                                               output_per_million=7)),
    ])


def _payer(tmp_path: Path) -> Payer:
    p = object.__new__(Payer)
    p.root, p.node, p.chain_id, p._store = "http://node", NODE.address, 31337, PayerStore(tmp_path)
    p.offer = _offer()
    p.state = ChannelState(CID, {}, deposited=1_000_000, charged=BEFORE, voucher=BEFORE + MAX,
                           receipts=2, spent=BEFORE, payments={"r1": [MAX, BEFORE, 0, 0]})
    return p


ADAPTER = "tiny@adapter:" + "ab" * 32


def test_an_adapter_request_pays_the_base_price_plus_the_surcharge(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    assert p.prices("tiny") == TokenPrices(1_000_000, 2_000_000)
    assert p.prices(ADAPTER) == TokenPrices(1_300_000, 2_700_000)
    assert p.prices("tiny", commitments=True) == TokenPrices(1_050_000, 2_050_000)
    assert p.prices(ADAPTER, commitments=True) == TokenPrices(1_350_000, 2_750_000)
    assert p.prices("plain") == TokenPrices(5, 7)
    assert p.prices("plain@adapter:" + "0" * 64) == TokenPrices(5, 7)  # no surcharge offered


def test_an_at_sign_in_a_model_id_is_not_an_adapter(tmp_path: Path) -> None:
    """Payer and node read a model name alike (agoranet.market.ModelName): only
    ``@adapter:`` names an adapter, so an offered id with an ``@`` in it is priced as
    offered, without the adapter surcharge, and ``tiny@house-style`` is another model."""
    p = _payer(tmp_path)
    p.offer.models.append(ModelOffer(
        id="org/model@v2", context_length=512,
        price=Price(input_per_million=11, output_per_million=13),
        adapters=AdapterTerms(accepted=True, surcharge=Price(input_per_million=1_000,
                                                             output_per_million=1_000))))
    assert p.prices("org/model@v2") == TokenPrices(11, 13)
    assert p.prices("org/model@v2@adapter:" + "ab" * 32) == TokenPrices(1_011, 1_013)
    with pytest.raises(PaymentError, match="does not offer model 'tiny@house-style'"):
        p.prices("tiny@house-style")


@pytest.mark.parametrize("model", ["huge", "huge@adapter:" + "ab" * 32, "", "@adapter:tiny",
                                   "tiny@house-style"])
def test_a_model_the_node_does_not_offer_is_refused_by_name(tmp_path: Path, model: str) -> None:
    with pytest.raises(PaymentError, match=f"^the node does not offer model {model!r}$"):
        _payer(tmp_path).prices(model)


def _response(tokens_in: int, tokens_out: int, amount: int) -> dict[str, Any]:
    receipt = NODE.sign(Receipt("r1", CID, tokens_in, tokens_out, amount, BEFORE + amount,
                                31337))
    return {"extra": {"receipt": receipt.to_json(), "chargedAmount": str(amount)}}


def _pending() -> PendingPayment:
    return PendingPayment("r1", MAX, BEFORE + MAX, BEFORE, "header")


def test_a_final_receipt_is_counted_once_and_forgets_the_voucher(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    # 10 prompt tokens and an empty answer: 10 * 1.0 = 10 base units, no commitments asked
    receipt = p.settle(_pending(), _response(10, 0, 10), "tiny")
    assert p.state is not None
    assert (p.state.charged, p.state.spent, p.state.receipts) == (BEFORE + 10, BEFORE + 10, 3)
    assert p.state.payments == {} and p.receipts() == [receipt]
    assert PayerStore(tmp_path).load()["receipts"] == 3  # type: ignore[index]


def test_a_running_receipt_is_counted_and_keeps_the_request_open(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    running = p.check(_pending(), _response(10, 5, 20), "tiny", max_tokens_out=5)
    p.adopt(_pending(), running, final=False)
    assert p.state is not None
    assert (p.state.charged, p.state.spent, p.state.receipts) == (BEFORE + 20, BEFORE + 20, 3)
    assert p.state.payments == {"r1": [MAX, BEFORE, 20, 0]}
