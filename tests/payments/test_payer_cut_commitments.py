"""A cut stream of a request that asked for commitments is counted at the surcharged price
(the node charges the surcharge on every token), and one that did not at the base price:
what :meth:`Payer.cut` counts beyond the last receipt, and what it saves. The payer's logic
on its real store, without a node or a chain (see test_payer_cut_terms.py)."""

from __future__ import annotations

from pathlib import Path

from eth_account import Account

from agoranet.payments.pay.payer import ChannelState, Payer, PendingPayment
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.registry.offer import CommitmentTerms, ModelOffer, Offer, Price

CID = "0x" + "ef" * 32
NODE = ReceiptSigner(bytes(Account.create().key))
BEFORE, MAX = 13_000, 50_000
PENDING = PendingPayment("r1", MAX, BEFORE + MAX, BEFORE, "header")


def _payer(tmp_path: Path) -> Payer:
    p = object.__new__(Payer)
    p.root, p.node, p.chain_id, p._store = "http://node", NODE.address, 31337, PayerStore(tmp_path)
    p.offer = Offer(engine="hf", models=[ModelOffer(
        id="proved", context_length=512,  # 10 a prompt token, 2000 an answer's, +5 proved
        price=Price(input_per_million=10_000_000, output_per_million=2_000_000_000),
        commitments=CommitmentTerms(offered=True, algorithm="toploc", chunk=32, k=8,
                                    price_per_million=5_000_000))])
    p.on_resync = p.on_dispute = None
    p.state = ChannelState(CID, {}, deposited=1_000_000, charged=BEFORE, voucher=BEFORE + MAX,
                           receipts=2, spent=BEFORE, payments={"r1": [MAX, BEFORE, 0, 0]})
    return p


def _saved(tmp_path: Path) -> tuple[int, int, dict[str, int]]:
    data = PayerStore(tmp_path).load()
    assert data is not None
    return data["charged"], data["spent"], data["unreceipted"]


def test_a_request_for_commitments_is_counted_with_the_surcharge(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    counted = p.cut(PENDING, None, "proved", arrived=3, usage=(40, 3), commitments=True)
    assert counted == 40 * 15 + 3 * 2005
    assert _saved(tmp_path) == (BEFORE, BEFORE + 6_615, {"r1": 6_615})


def test_a_request_without_commitments_is_counted_at_the_base_price(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    assert p.cut(PENDING, None, "proved", arrived=3, usage=(40, 3)) == 40 * 10 + 3 * 2000
    assert _saved(tmp_path) == (BEFORE, BEFORE + 6_400, {"r1": 6_400})


def test_beyond_a_surcharged_running_receipt_the_surcharge_counts_too(tmp_path: Path) -> None:
    p = _payer(tmp_path)  # the receipt: 40 prompt, 1 answer token, with proofs
    held = NODE.sign(Receipt("r1", CID, 40, 1, 2_605, BEFORE + 2_605, 31337))
    assert p.cut(PENDING, held, "proved", arrived=3, commitments=True) == 2 * 2005
    assert _saved(tmp_path) == (BEFORE + 2_605, BEFORE + 2_605 + 4_010, {"r1": 4_010})
