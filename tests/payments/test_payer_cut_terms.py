"""What a cut stream counts beyond its last receipt (:meth:`Payer.cut`) follows the request's
terms: the answer's usage when it came, the model's context bounding an unknown prompt, all
the voucher allows when the model has no price in the offer; one base unit is counted like
any other, and whatever changed is saved. The payer's logic on its real store, reloaded to
see what was saved, without a node or a chain (see also test_payer_cut_accounting.py)."""

from __future__ import annotations

from pathlib import Path

from eth_account import Account

from agoranet.payments.pay.payer import ChannelState, Payer, PendingPayment
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.registry.offer import ModelOffer, Offer, Price

CID = "0x" + "ef" * 32
NODE = ReceiptSigner(bytes(Account.create().key))
BEFORE, MAX = 13_000, 50_000
PENDING = PendingPayment("r1", MAX, BEFORE + MAX, BEFORE, "header")


def _payer(tmp_path: Path) -> Payer:
    p = object.__new__(Payer)
    p.root, p.node, p.chain_id, p._store = "http://node", NODE.address, 31337, PayerStore(tmp_path)
    p.offer = Offer(engine="hf", models=[
        ModelOffer(id="cheap", context_length=512,  # 10 a prompt token, 2000 an answer's
                   price=Price(input_per_million=10_000_000, output_per_million=2_000_000_000)),
        ModelOffer(id="unit", context_length=4096,  # a free prompt, 1 an answer's token
                   price=Price(input_per_million=0, output_per_million=1_000_000))])
    p.on_resync = p.on_dispute = None
    p.state = ChannelState(CID, {}, deposited=1_000_000, charged=BEFORE, voucher=BEFORE + MAX,
                           receipts=2, spent=BEFORE, payments={"r1": [MAX, BEFORE, 0, 0]})
    return p


def _saved(tmp_path: Path) -> tuple[int, int, dict[str, int]]:
    """(charged, spent, unreceipted) as the store holds them."""
    data = PayerStore(tmp_path).load()
    assert data is not None
    return data["charged"], data["spent"], data["unreceipted"]


def _running(tokens_in: int, tokens_out: int, amount: int) -> Receipt:
    return NODE.sign(Receipt("r1", CID, tokens_in, tokens_out, amount, BEFORE + amount, 31337))


def test_the_models_context_bounds_a_prompt_no_receipt_counted(tmp_path: Path) -> None:
    # no receipt, no usage: the prompt fills what the context leaves (510 tokens)
    p = _payer(tmp_path)
    assert p.cut(PENDING, None, "cheap", arrived=2) == 510 * 10 + 2 * 2000
    assert _saved(tmp_path) == (BEFORE, BEFORE + 9_100, {"r1": 9_100})


def test_the_answers_usage_counts_when_it_came(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    assert p.cut(PENDING, None, "cheap", arrived=2, usage=(40, 3)) == 40 * 10 + 3 * 2000
    assert _saved(tmp_path) == (BEFORE, BEFORE + 6_400, {"r1": 6_400})


def test_a_model_without_a_price_counts_all_the_voucher_allows(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    held = _running(3, 4, 20_000)
    assert p.cut(PENDING, held, "unknown-model", arrived=9) == MAX - 20_000
    assert _saved(tmp_path) == (BEFORE + 20_000, BEFORE + MAX, {"r1": MAX - 20_000})
    q = _payer(tmp_path / "all")
    assert q.cut(PENDING, _running(3, 4, MAX), "unknown-model", arrived=9) == 0
    assert _saved(tmp_path / "all") == (BEFORE + MAX, BEFORE + MAX, {})
    r = _payer(tmp_path / "none")
    assert r.cut(PENDING, None, "unknown-model", arrived=1) == MAX


def test_one_base_unit_beyond_the_receipt_is_counted_and_saved(tmp_path: Path) -> None:
    p = _payer(tmp_path)  # with a receipt: 5 tokens arrived, the receipt counts 4
    assert p.cut(PENDING, _running(3, 4, 4), "unit", arrived=5) == 1
    assert _saved(tmp_path) == (BEFORE + 4, BEFORE + 5, {"r1": 1})
    q = _payer(tmp_path / "bare")  # without one: one token, a free prompt
    assert q.cut(PENDING, None, "unit", arrived=1) == 1
    assert _saved(tmp_path / "bare") == (BEFORE, BEFORE + 1, {"r1": 1})


def test_a_receipt_with_nothing_after_it_is_still_believed_and_saved(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    assert p.cut(PENDING, _running(3, 4, 4), "unit", arrived=4) == 0
    assert _saved(tmp_path) == (BEFORE + 4, BEFORE + 4, {})
    assert p.state is not None and p.state.payments["r1"][2] == 4  # its running receipt
