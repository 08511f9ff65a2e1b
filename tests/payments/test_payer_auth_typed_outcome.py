"""What came of a request paid through :class:`PayerAuth` is typed, never in httpx's
``extensions``: a caller that wants it (or a cap) sends the request with
``auth.paying(payment)`` and reads the :class:`Payment`; a client holding the auth
itself pays each request and finds no payment data on the response. The auditor's meter
and the verify command's audit payment go through the same typed object. The auth
flow's logic with a payer double and a node answered by ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import httpx
import pytest
from x402.schemas import PaymentRequired, PaymentRequirements

from agoranet.gateway.audit_meter import AuditMeter
from agoranet.payments import x402wire
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer, PendingPayment
from agoranet.verify.audit_payment import AuditPayment

BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
MAX = 5_000
RECEIPT = {x402wire.PAYMENT_RESPONSE: x402wire.encode_json({"success": True, "extra": {}})}


class _Payer:
    """Signs vouchers, believes any receipt, and records what it is asked."""

    max_per_request = MAX
    state = None

    def __init__(self) -> None:
        self.signed: list[PendingPayment] = []
        self.calls: list[str] = []

    def pay(self, amount: int, request_id: str | None = None) -> PendingPayment:
        pending = PendingPayment(request_id or f"r{len(self.signed)}", amount, amount, 0,
                                 f"voucher-{len(self.signed)}")
        self.signed.append(pending)
        return pending

    def settle(self, pending: PendingPayment, response: dict[str, Any], model: str,
               **terms: Any) -> str:
        self.calls.append(f"settle {pending.request_id}")
        return f"receipt of {pending.request_id}"

    def hold(self, pending: PendingPayment, response: dict[str, Any]) -> None:
        self.calls.append(f"hold {pending.request_id}")

    def cut(self, pending: PendingPayment, running: Any, model: str, **terms: Any) -> int:
        self.calls.append(f"cut {pending.request_id}")
        return 7


def _events(*events: dict[str, Any], aio: bool = False
            ) -> Iterator[bytes] | AsyncIterator[bytes]:
    """A stream's body, frame by frame (not read ahead: the auth's reader sees each)."""
    frames = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]

    async def each() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame
    return each() if aio else iter(frames)


CHUNK = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}]}
FINAL = {"object": "agoranet.receipt", "x402_payment_response": {"extra": {}}}
ANSWERS: dict[str, Callable[[bool], httpx.Response]] = {
    "plain": lambda aio: httpx.Response(200, json={"usage": {}}, headers=RECEIPT),
    "held": lambda aio: httpx.Response(200, json={"id": "ftjob-1"}, headers={
        x402wire.PAYMENT_RESPONSE: x402wire.encode_json({"success": True,
                                                         "extra": {"held": True}})}),
    "stream": lambda aio: httpx.Response(200, content=_events(CHUNK, FINAL, aio=aio),
                                         headers={"content-type": "text/event-stream"}),
    "cut stream": lambda aio: httpx.Response(200, content=_events(CHUNK, aio=aio),
                                             headers={"content-type": "text/event-stream"}),
}
OUTCOMES = {"plain": "settle r0", "held": "hold r0", "stream": "settle r0",
            "cut stream": "cut r0"}


def _no_payment_data(response: httpx.Response) -> bool:
    return not any("agoranet" in str(key).lower() for key in response.extensions)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_a_client_holding_the_auth_pays_and_gets_no_payment_data_in_extensions(
        mode: str, answer: str) -> None:
    """The auth on a whole client pays the request and checks what the node answers
    (receipt, hold, final receipt event, or a cut stream counted), and the response
    carries nothing of it: no receipt, hold or unreceipted amount in its extensions."""
    payer = _Payer()
    auth = PayerAuth(cast(Payer, payer))
    transport = httpx.MockTransport(lambda _: ANSWERS[answer](mode == "async"))
    if mode == "sync":
        with httpx.Client(base_url="http://node", auth=auth, transport=transport) as http:
            response = http.post("/v1/chat/completions", json=BODY)
            response.read()
    else:
        async def run() -> httpx.Response:
            async with httpx.AsyncClient(base_url="http://node", auth=auth,
                                         transport=transport) as http:
                answered = await http.post("/v1/chat/completions", json=BODY)
                await answered.aread()
                return answered
        response = asyncio.run(run())
    assert response.status_code == 200
    assert payer.calls == [OUTCOMES[answer]]  # paid and checked all the same
    assert _no_payment_data(response)


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_a_request_sent_with_its_payment_reads_the_outcome_there(answer: str) -> None:
    payer, payment = _Payer(), Payment()
    auth = PayerAuth(cast(Payer, payer))
    transport = httpx.MockTransport(lambda _: ANSWERS[answer](False))
    with httpx.Client(base_url="http://node", auth=auth, transport=transport) as http:
        response = http.post("/v1/chat/completions", json=BODY, auth=auth.paying(payment))
    assert payment.pending is payer.signed[0]
    assert (payment.receipt, payment.held, payment.unreceipted) == {
        "plain": ("receipt of r0", None, 0), "held": (None, payer.signed[0], 0),
        "stream": ("receipt of r0", None, 0), "cut stream": (None, None, 7)}[answer]
    assert _no_payment_data(response)


def test_a_payments_cap_is_its_voucher_and_a_402_over_it_stands() -> None:
    """``Payment.max_amount`` caps the request: its voucher allows that (not the auth's
    maximum), and a node asking more gets no second payment: its 402 is the answer."""
    payer, payment, asked = _Payer(), Payment(300), []
    auth = PayerAuth(cast(Payer, payer))
    required = x402wire.encode_model(PaymentRequired(x402_version=2, accepts=[
        PaymentRequirements(scheme="batch-settlement", network="eip155:31337",
                            asset="0x" + "22" * 20, amount="301", pay_to="0x" + "22" * 20,
                            max_timeout_seconds=60)]))

    def node(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get(x402wire.PAYMENT_SIGNATURE))
        return httpx.Response(402, headers={x402wire.PAYMENT_REQUIRED: required})

    with httpx.Client(base_url="http://node", transport=httpx.MockTransport(node)) as http:
        response = http.post("/v1/chat/completions", json=BODY, auth=auth.paying(payment))
    assert response.status_code == 402 and asked == ["voucher-0"]
    assert [p.max_amount for p in payer.signed] == [300]
    assert payment.receipt is None and payer.calls == []


def test_the_audit_meter_counts_the_receipt_of_each_paid_challenge() -> None:
    """The gateway's auditor pays each challenge through the node's auth and logs the
    receipt from the challenge's typed payment (none crosses the response)."""
    payer = _Payer()
    meter = AuditMeter(PayerAuth(cast(Payer, payer)))
    transport = httpx.MockTransport(lambda _: httpx.Response(
        200, json={"usage": {"prompt_tokens": 3, "completion_tokens": 2}}, headers=RECEIPT))
    with httpx.Client(base_url="http://node", auth=meter, transport=transport) as http:
        responses = [http.post("/v1/chat/completions", json=BODY) for _ in range(2)]
    assert [(c.prompt_tokens, c.completion_tokens, c.receipt) for c in meter.charges] == [
        (3, 2, "receipt of r0"), (3, 2, "receipt of r1")]
    assert all(_no_payment_data(r) for r in responses)


def test_an_audit_payment_caps_each_challenge_at_its_worst_case() -> None:
    """``agoranet verify`` pays a challenge with a voucher for its worst case (the budget's
    check), not the payer's maximum."""
    payer = _Payer()
    audit = AuditPayment.over(cast(Payer, payer), 10_000)
    transport = httpx.MockTransport(lambda _: ANSWERS["plain"](False))
    with httpx.Client(base_url="http://node", auth=audit.auth, transport=transport) as http:
        http.post("/v1/chat/completions", json=BODY, auth=audit.paying(1_234))
        http.post("/v1/chat/completions", json=BODY, auth=audit.paying(None))
    assert [p.max_amount for p in payer.signed] == [1_234, MAX]
