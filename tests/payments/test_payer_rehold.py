"""A fine-tuning job's payment held again after the gateway restarted (:meth:`Payer.rehold`):
the payment is rebuilt from the voucher the payer saved before it left (its maximum and
what was charged before it), so the ended job's receipt is checked against exactly that
and adopted; a payment the payer never signed, or whose receipt it refused, is not held
again. The payer's logic on its real store, reloaded as after a restart, without a node or
a chain (the end-to-end run is tests/integration/test_paid_fine_tuning.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account

from agoranet.errors import ReceiptError
from agoranet.payments.pay.payer import ChannelState, Payer
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.receipts import Receipt, ReceiptSigner

CID = "0x" + "ab" * 32
NODE = ReceiptSigner(bytes(Account.create().key))
PRICE = 2_000_000  # per million training tokens
BEFORE, MAX = 13_000, 50_000
DEPOSIT = 1_000_000


def _restarted(tmp_path: Path, payments: dict[str, list[int]]) -> Payer:
    """A payer whose saved state holds ``payments``, loaded afresh from its store."""
    saved = ChannelState(CID, {}, deposited=DEPOSIT, charged=BEFORE, voucher=BEFORE + MAX,
                         receipts=2, spent=BEFORE, payments=payments)
    store = PayerStore(tmp_path)
    store.save(saved, None)
    store.close()
    p = object.__new__(Payer)
    p.root, p.node, p.chain_id, p._store = "http://node", NODE.address, 31337, PayerStore(tmp_path)
    p.offer = SimpleNamespace(  # type: ignore[assignment]
        fine_tuning=SimpleNamespace(price_per_million_training_tokens=PRICE))
    p._jobs = {}
    p.state = p._load()
    assert p.state == saved
    return p


def _charged(request_id: str, tokens: int, before: int = BEFORE) -> dict[str, Any]:
    amount = tokens * PRICE // 1_000_000
    receipt = NODE.sign(Receipt(request_id, CID, tokens, 0, amount, before + amount, 31337))
    return {"request_id": request_id, "status": "charged",
            "response": {"extra": {"receipt": receipt.to_json(), "chargedAmount": str(amount)}}}


def test_a_job_held_before_a_restart_is_held_again_and_settles_against_its_voucher(
        tmp_path: Path) -> None:
    p = _restarted(tmp_path, {"job-1": [MAX, BEFORE, 0, 0]})
    assert p.held_jobs() == []  # nothing is held in memory after a restart
    assert p.rehold("job-1") is True
    assert p.held_jobs() == ["job-1"]
    receipt = p.settle_job(_charged("job-1", tokens=25_000))  # its whole maximum
    assert receipt is not None and (receipt.amount, receipt.cumulative) == (MAX, BEFORE + MAX)
    assert p.state is not None
    assert (p.state.charged, p.state.spent, p.state.receipts) == (BEFORE + MAX,) * 2 + (3,)
    assert p.state.voucher == BEFORE + MAX and p.state.payments == {}
    assert p.held_jobs() == [] and p.receipts() == [receipt]
    # money invariants: what the receipts back is what is owed, within the voucher signed
    assert p.state.charged <= p.state.voucher <= p.state.deposited
    assert p.state.spent >= p.state.charged


@pytest.mark.parametrize(("tokens", "before", "why"), [
    (25_001, BEFORE, "charges more than the voucher allowed"),  # beyond the job's maximum
    (12_000, 0, "has a cumulative out of step"),  # not after what was charged before it
])
def test_a_reheld_jobs_receipt_is_checked_against_the_saved_voucher(
        tmp_path: Path, tokens: int, before: int, why: str) -> None:
    p = _restarted(tmp_path, {"job-1": [MAX, BEFORE, 0, 0]})
    assert p.rehold("job-1") is True
    with pytest.raises(ReceiptError, match=rf"^receipt job-1 {why}"):
        p.settle_job(_charged("job-1", tokens=tokens, before=before))
    assert p.state is not None and (p.state.charged, p.state.spent) == (BEFORE, BEFORE)
    assert p.receipts() == []


def test_a_receipt_for_another_request_does_not_settle_a_reheld_job(tmp_path: Path) -> None:
    p = _restarted(tmp_path, {"job-1": [MAX, BEFORE, 0, 0], "job-2": [MAX, BEFORE, 0, 0]})
    assert p.rehold("job-1") is True
    payment = _charged("job-2", tokens=12_000)
    payment["request_id"] = "job-1"
    with pytest.raises(ReceiptError, match=r"^receipt job-2 is for another request$"):
        p.settle_job(payment)
    assert p.held_jobs() == ["job-1"]


@pytest.mark.parametrize("payments", [
    {},  # never signed (or settled and forgotten)
    {"job-1": [MAX, BEFORE, 0, 1]},  # its receipt was refused
    {"job-2": [MAX, BEFORE, 0, 0]},  # another payment
])
def test_a_payment_not_signed_or_refused_is_not_held_again(
        tmp_path: Path, payments: dict[str, list[int]]) -> None:
    p = _restarted(tmp_path, payments)
    assert p.rehold("job-1") is False
    assert p.held_jobs() == []
    assert p.state is not None and p.state.payments == payments  # nothing changed
