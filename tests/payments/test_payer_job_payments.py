"""A fine-tuning job's payment on the payer's side: the node's hold must be for the voucher
the payer sent; an ended job is settled once, by its status (released: nothing owed and the
voucher forgotten; charged: the receipt checked at the offer's training price, then
adopted); anything else is refused and leaves the job held. The payer's own logic on its
real store, without a node or a chain (the end-to-end run is tests/integration/
test_paid_fine_tuning.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account

from agoranet.errors import PaymentError, ReceiptError
from agoranet.market import TokenPrices
from agoranet.payments.pay.payer import ChannelState, Payer, PendingPayment
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner

CID = "0x" + "cd" * 32
NODE = ReceiptSigner(bytes(Account.create().key))
PRICE = 2_000_000  # per million training tokens
BEFORE, MAX = 13_000, 50_000


def _payer(tmp_path: Path) -> Payer:
    p = object.__new__(Payer)
    p.root, p.node, p.chain_id, p._store = "http://node", NODE.address, 31337, PayerStore(tmp_path)
    p.offer = SimpleNamespace(  # type: ignore[assignment]
        fine_tuning=SimpleNamespace(price_per_million_training_tokens=PRICE))
    p._jobs = {}
    p.account = None
    p.state = ChannelState(CID, {}, deposited=1_000_000, charged=BEFORE, voucher=BEFORE + MAX,
                           receipts=2, spent=BEFORE, payments={"job-1": [MAX, BEFORE, 0, 0]})
    return p


def _pending(request_id: str = "job-1") -> PendingPayment:
    return PendingPayment(request_id, MAX, BEFORE + MAX, BEFORE, "header")


def _held(p: Payer) -> PendingPayment:
    pending = _pending()
    p.hold(pending, {"extra": {"held": True, "requestId": "job-1", "maxAmount": str(MAX)}})
    return pending


def _charged(tokens: int, amount: int, charged: int | None = None) -> dict[str, Any]:
    receipt = NODE.sign(Receipt("job-1", CID, tokens, 0, amount, BEFORE + amount, 31337))
    return {"request_id": "job-1", "status": "charged",
            "response": {"extra": {"receipt": receipt.to_json(),
                                   "chargedAmount": str(amount if charged is None else charged)}}}


def test_the_training_price_counts_trained_tokens_as_input(tmp_path: Path) -> None:
    assert _payer(tmp_path).training_prices() == TokenPrices(PRICE, 0)


@pytest.mark.parametrize(
    "extra",
    [{"requestId": "job-2", "maxAmount": str(MAX)}, {"requestId": "job-1", "maxAmount": "1"},
     {"requestId": "job-1"}, {}],
)  # fmt: skip
def test_a_hold_for_another_payment_is_refused(tmp_path: Path, extra: dict[str, str]) -> None:
    p = _payer(tmp_path)
    with pytest.raises(PaymentError, match=r"^the node's hold is for another payment$"):
        p.hold(_pending(), {"extra": extra})
    with pytest.raises(PaymentError):
        p.hold(_pending(), {})
    assert p.held_jobs() == []


def test_a_charged_job_is_checked_at_the_training_price_and_adopted(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    _held(p)
    assert p.held_jobs() == ["job-1"]
    receipt = p.settle_job(_charged(tokens=12_000, amount=24_000))
    assert receipt is not None and receipt.amount == 24_000
    assert p.state is not None
    assert (p.state.charged, p.state.spent, p.state.receipts) == (BEFORE + 24_000,) * 2 + (3,)
    assert "job-1" not in p.state.payments and p.held_jobs() == []
    assert p.receipts() == [receipt]
    with pytest.raises(PaymentError, match=r"^no fine-tuning job payment 'job-1' is held$"):
        p.settle_job(_charged(tokens=12_000, amount=24_000))  # settled once


@pytest.mark.parametrize(("tokens", "amount", "charged"),
                         [(12_000, 30_000, None), (12_000, 24_000, 20_000), (30_000, 60_000, None)])
def test_a_wrong_job_receipt_is_refused_and_the_job_stays_held(
        tmp_path: Path, tokens: int, amount: int, charged: int | None) -> None:
    p = _payer(tmp_path)
    _held(p)
    with pytest.raises(ReceiptError):
        p.settle_job(_charged(tokens, amount, charged))
    assert p.state is not None and (p.state.charged, p.state.spent) == (BEFORE, BEFORE)
    assert p.held_jobs() == ["job-1"] and p.receipts() == []


def test_a_released_job_costs_nothing_and_its_voucher_is_forgotten(tmp_path: Path) -> None:
    p = _payer(tmp_path)
    _held(p)
    assert p.settle_job({"request_id": "job-1", "status": "released"}) is None
    assert p.state is not None and (p.state.charged, p.state.spent) == (BEFORE, BEFORE)
    assert p.state.payments == {} and p.held_jobs() == []
    assert PayerStore(tmp_path).load()["payments"] == {}  # type: ignore[index]


@pytest.mark.parametrize(("status", "message"), [
    ("held", "^job payment job-1 is still held: the job has not ended$"),
    ("lost", "^job payment job-1 has status 'lost'$"),
    (None, "^job payment job-1 has status None$"),
])
def test_a_job_that_has_not_ended_or_is_unknown_is_not_settled(
        tmp_path: Path, status: str | None, message: str) -> None:
    p = _payer(tmp_path)
    _held(p)
    with pytest.raises(PaymentError, match=message):
        p.settle_job({"request_id": "job-1", "status": status})
    assert p.held_jobs() == ["job-1"]
    assert p.state is not None and "job-1" in p.state.payments
    with pytest.raises(PaymentError, match=r"^no fine-tuning job payment '' is held$"):
        p.settle_job({"status": "charged"})


def test_only_the_wallet_that_funded_the_channel_can_withdraw(tmp_path: Path) -> None:
    with pytest.raises(PaymentError, match=r"^only the wallet that funded the channel can"):
        _payer(tmp_path).withdraw()


@pytest.mark.parametrize("status", ["charged", "released"])
def test_a_long_job_settles_after_later_requests_pushed_its_voucher_out(
        tmp_path: Path, status: str) -> None:
    """While the job trained, the payer paid more requests than it keeps vouchers of: the
    job's is no longer among them, and the job still settles (charged: adopted)."""
    p = _payer(tmp_path)
    _held(p)
    assert p.state is not None
    del p.state.payments["job-1"]  # pushed out by the later requests' vouchers
    if status == "charged":
        receipt = p.settle_job(_charged(tokens=12_000, amount=24_000))
        assert receipt is not None and p.receipts() == [receipt]
        assert (p.state.charged, p.state.spent) == (BEFORE + 24_000,) * 2
    else:
        assert p.settle_job({"request_id": "job-1", "status": "released"}) is None
        assert (p.state.charged, p.state.spent) == (BEFORE, BEFORE)
    assert p.held_jobs() == [] and p.state.payments == {}
