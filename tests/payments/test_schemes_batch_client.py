"""The ``batch-settlement`` client half is a thin adapter over a Payer: what it hands on.

A recording stand-in for the payer (logic only: the real Payer paying a real node
through this half is in test_schemes_chain.py) shows that the half passes the request's
maximum and id to ``Payer.pay``, the model and ``max_tokens`` to ``Payer.settle``, and
follows a corrective 402 only when it is one (a ``*_mismatch`` error with a
``batch-settlement`` entry), through ``Payer.resync``.
"""

from __future__ import annotations

from typing import Any

import pytest
from x402.schemas import PaymentRequired

from agoranet.payments.pay.payer import PendingPayment
from agoranet.payments.receipts import Receipt
from agoranet.payments.schemes import (
    SCHEME_BATCH_SETTLEMENT,
    SCHEME_EXACT,
    BatchSettlementClient,
    ClientPayment,
    Paid,
)

from .acceptor_support import NETWORK, NODE, TERMS

pytestmark = pytest.mark.timeout(30)

MISMATCH = "invalid_batch_settlement_evm_cumulative_amount_mismatch"


class RecordingPayer:
    """What BatchSettlementClient calls on a Payer, recorded; answers as a Payer would."""

    node = NODE.address
    network = NETWORK

    def __init__(self, resynced: bool = True) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.resynced = resynced
        self.receipt = Receipt("req-9", "0x" + "22" * 32, 3, 4, 700, 1_700, 31337)

    def pay(self, max_amount: int, request_id: str | None = None) -> PendingPayment:
        self.calls.append(("pay", max_amount, request_id))
        return PendingPayment(request_id or "made-up", max_amount, 1_000 + max_amount, 1_000,
                              "header")

    def settle(self, pending: PendingPayment, response: dict[str, Any], model: str, *,
               max_tokens: int | None = None) -> Receipt:
        self.calls.append(("settle", pending, model, max_tokens))
        return self.receipt

    def resync(self, corrective: dict[str, Any]) -> bool:
        self.calls.append(("resync", corrective))
        return self.resynced


def half(payer: RecordingPayer) -> BatchSettlementClient:
    return BatchSettlementClient(payer)  # type: ignore[arg-type]


def test_pay_hands_the_maximum_and_request_id_to_the_payer() -> None:
    payer = RecordingPayer()
    payment = half(payer).pay(TERMS.requirement(SCHEME_BATCH_SETTLEMENT, 5_000), "req-9")
    assert payer.calls == [("pay", 5_000, "req-9")]
    assert payment == ClientPayment(SCHEME_BATCH_SETTLEMENT, "req-9", 5_000, "header",
                                    PendingPayment("req-9", 5_000, 6_000, 1_000, "header"))
    half(payer).pay(TERMS.requirement(SCHEME_BATCH_SETTLEMENT, 7))
    assert payer.calls[-1] == ("pay", 7, None)  # the payer makes the id up


def test_check_hands_the_model_and_limit_to_the_payer_and_keeps_the_transaction() -> None:
    payer = RecordingPayer()
    payment = half(payer).pay(TERMS.requirement(SCHEME_BATCH_SETTLEMENT, 5_000), "req-9")
    response = {"success": True, "transaction": "0xdeposit", "extra": {}}
    paid = half(payer).check(payment, response, model="tiny", max_tokens=8)
    assert paid == Paid(700, "0xdeposit", payer.receipt)
    assert payer.calls[-1] == ("settle", payment.state, "tiny", 8)
    assert half(payer).check(payment, {"success": True}) == Paid(700, "", payer.receipt)
    assert payer.calls[-1] == ("settle", payment.state, "", None)


def required(error: str | None, *schemes: str) -> PaymentRequired:
    accepts = []
    for scheme in schemes:
        entry = TERMS.requirement(scheme, 5_000).model_dump(by_alias=True)
        entry["extra"]["channelState"] = {"channelId": "0x" + "22" * 32}
        accepts.append(entry)
    return PaymentRequired.model_validate({"x402Version": 2, "error": error,
                                           "accepts": accepts})


@pytest.mark.parametrize("resynced", [True, False])
def test_a_corrective_402_goes_to_the_payers_resync(resynced: bool) -> None:
    payer = RecordingPayer(resynced)
    corrective = required(MISMATCH, SCHEME_EXACT, SCHEME_BATCH_SETTLEMENT)
    assert half(payer).adopt(corrective) is resynced
    assert payer.calls == [("resync", corrective.accepts[1].extra)]


@pytest.mark.parametrize("problem", [
    required("payment_required", SCHEME_BATCH_SETTLEMENT),  # not a corrective
    required(None, SCHEME_BATCH_SETTLEMENT),
    required(MISMATCH, SCHEME_EXACT),  # none for this scheme
    required(MISMATCH),
])
def test_any_other_402_is_not_adopted_and_the_payer_is_not_asked(problem: PaymentRequired
                                                                 ) -> None:
    payer = RecordingPayer()
    assert half(payer).adopt(problem) is False
    assert payer.calls == []
