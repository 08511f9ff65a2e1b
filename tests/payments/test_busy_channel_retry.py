"""A payment the node refuses as "channel busy" (it still holds the channel for the payer's
previous request) is sent again, the same voucher, after a pause -- each of
``BUSY_RETRIES_S`` in turn, by the sync and the async client alike -- and never re-signed;
once the pauses are spent the busy 402 stands and reaches the caller. Behaviour, not timing:
the pauses the flow asks for are recorded instead of slept. The auth flow's logic alone,
with a payer double and a node answered by ``httpx.MockTransport`` (the real node's busy
refusal is tests/payments/test_payer_disputes.py::test_a_busy_channel_is_waited_out)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, cast

import httpx
import pytest
from x402.mechanisms.evm.batch_settlement.errors import ERR_CHANNEL_BUSY
from x402.schemas import PaymentRequired

from agoranet.payments import x402wire
from agoranet.payments.pay import httpx_auth
from agoranet.payments.pay.httpx_auth import BUSY_RETRIES_S, PayerAuth, Payment
from agoranet.payments.pay.payer import Payer, PendingPayment

BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
MAX = 5_000
BUSY = x402wire.encode_model(PaymentRequired(x402_version=2, error=ERR_CHANNEL_BUSY, accepts=[]))


class _Payer:
    """Signs numbered vouchers and believes any receipt (the flow's logic is under test)."""

    max_per_request = MAX

    def __init__(self) -> None:
        self.signed: list[PendingPayment] = []
        self.settled: list[PendingPayment] = []

    def pay(self, amount: int, request_id: str | None = None) -> PendingPayment:
        pending = PendingPayment(request_id or f"r{len(self.signed)}", amount, amount, 0,
                                 f"voucher-{len(self.signed)}")
        self.signed.append(pending)
        return pending

    def settle(self, pending: PendingPayment, response: dict[str, Any], model: str,
               **_: Any) -> str:
        self.settled.append(pending)
        return "receipt"


def _node(busy: int, seen: list[httpx.Request]) -> httpx.MockTransport:
    """Refuses the first ``busy`` payments as busy, then answers with a receipt."""
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= busy:
            return httpx.Response(402, headers={x402wire.PAYMENT_REQUIRED: BUSY})
        return httpx.Response(200, json={"ok": True}, headers={
            x402wire.PAYMENT_RESPONSE: x402wire.encode_json({"success": True, "extra": {}})})
    return httpx.MockTransport(answer)


def _post(mode: str, auth: httpx.Auth, transport: httpx.MockTransport) -> httpx.Response:
    if mode == "sync":
        with httpx.Client(base_url="http://node", auth=auth, transport=transport) as http:
            return http.post("/v1/chat/completions", json=BODY)

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(base_url="http://node", auth=auth,
                                     transport=transport) as http:
            return await http.post("/v1/chat/completions", json=BODY)
    return asyncio.run(run())


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the flow asks for, sync (time.sleep) or async (anyio.sleep)."""
    asked: list[float] = []

    async def pause(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(httpx_auth.time, "sleep", asked.append)
    monkeypatch.setattr(httpx_auth.anyio, "sleep", pause)
    return asked


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("busy", [1, 3, len(BUSY_RETRIES_S)])
def test_a_busy_refusal_is_paid_again_with_the_same_voucher_after_a_pause(
        mode: str, busy: int, pauses: list[float]) -> None:
    payer, seen = _Payer(), []
    auth = PayerAuth(cast(Payer, payer))
    payment = Payment()
    response = _post(mode, auth.paying(payment), _node(busy, seen))
    assert response.status_code == 200
    assert payment.receipt == "receipt"
    assert pauses == list(BUSY_RETRIES_S[:busy])  # a pause before each resend, growing
    assert len(seen) == busy + 1
    assert [r.headers[x402wire.PAYMENT_SIGNATURE] for r in seen] == ["voucher-0"] * (busy + 1)
    assert payer.signed == payer.settled and len(payer.signed) == 1  # one voucher, believed
    assert auth._lock.acquire(blocking=False)  # the channel's lock was let go


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_channel_still_busy_after_every_pause_answers_the_busy_402(
        mode: str, pauses: list[float]) -> None:
    payer, seen = _Payer(), []
    auth = PayerAuth(cast(Payer, payer))
    response = _post(mode, auth, _node(len(BUSY_RETRIES_S) + 5, seen))
    assert response.status_code == 402
    assert x402wire.decode_payment_required(
        response.headers[x402wire.PAYMENT_REQUIRED]).error == ERR_CHANNEL_BUSY
    assert pauses == list(BUSY_RETRIES_S)
    assert len(seen) == len(BUSY_RETRIES_S) + 1  # the first send and one after each pause
    assert len(payer.signed) == 1 and payer.settled == []  # nothing believed: no receipt
    assert auth._lock.acquire(blocking=False)


def test_the_pauses_grow_and_stay_short() -> None:
    """Each pause doubles the last: a hang-up the node has not seen yet is waited out in
    about a second and a third, not forever."""
    assert all(b == 2 * a for a, b in itertools.pairwise(BUSY_RETRIES_S))
    assert BUSY_RETRIES_S[0] > 0 and 1 < sum(BUSY_RETRIES_S) < 2
