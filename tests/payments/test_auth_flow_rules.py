"""The paying client's rules outside the stream reader: which requests are paid, and with
what; how a node's 402 is answered (once; a channel-state refusal repairs the channel
first, and does not use up that one answer); what a non-stream answer must carry (a
readable receipt, or a fine-tuning job's hold); and the terms its receipt is checked
against (the model, the completion limit the node reads from the body, commitments).
The auth flow's logic alone, with a payer double and a node answered by
``httpx.MockTransport`` (the payer's own receipt rules: tests/payments/test_receipt_checks.py;
the stream reader: test_stream_receipt_events.py; busy channels: test_busy_channel_retry.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.schemas import PaymentRequired, PaymentRequirements

from agoranet.errors import PaymentError
from agoranet.payments import x402wire
from agoranet.payments.pay import httpx_auth
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer, PendingPayment

BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
MAX = 5_000
ADDR = "0x" + "22" * 20
RECEIPT = {x402wire.PAYMENT_RESPONSE: x402wire.encode_json({"success": True, "extra": {}})}


class _Payer:
    """Signs numbered vouchers, believes any receipt, and records what it is asked."""

    def __init__(self, max_per_request: int | None = MAX, repaired: str | None = None) -> None:
        self.max_per_request = max_per_request
        self.repaired = repaired  # what reconcile() answers
        self.signed: list[PendingPayment] = []
        self.calls: list[tuple[Any, ...]] = []

    def pay(self, amount: int, request_id: str | None = None) -> PendingPayment:
        pending = PendingPayment(request_id or f"r{len(self.signed)}", amount, amount, 0,
                                 f"voucher-{len(self.signed)}")
        self.signed.append(pending)
        return pending

    def settle(self, pending: PendingPayment, response: dict[str, Any], model: str,
               **terms: Any) -> str:
        self.calls.append(("settle", pending.request_id, model, sorted(terms.items())))
        return "receipt"

    def hold(self, pending: PendingPayment, response: dict[str, Any]) -> None:
        self.calls.append(("hold", pending, response))

    def reconcile(self) -> str | None:
        self.calls.append(("reconcile",))
        return self.repaired


def _required(amount: int, error: str | None = None) -> str:
    accept = PaymentRequirements(scheme="batch-settlement", network="eip155:31337", asset=ADDR,
                                 amount=str(amount), pay_to=ADDR, max_timeout_seconds=60)
    return x402wire.encode_model(PaymentRequired(x402_version=2, error=error, accepts=[accept]))


def _node(*answers: httpx.Response, seen: list[httpx.Headers]) -> httpx.MockTransport:
    """Answers the requests it gets with ``answers`` in turn (the last one from then on);
    ``seen`` gets each request's headers as they were sent (a resent request is the same
    object, its headers changed)."""
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(httpx.Headers(request.headers))
        return answers[min(len(seen), len(answers)) - 1]
    return httpx.MockTransport(answer)


def _client(auth: httpx.Auth, transport: httpx.MockTransport) -> httpx.Client:
    """A client for one request when ``auth`` is one request's (``PayerAuth.paying``)."""
    return httpx.Client(base_url="http://node", auth=auth, transport=transport)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the flow asks for (a busy channel's), recorded instead of slept."""
    asked: list[float] = []
    monkeypatch.setattr(httpx_auth.time, "sleep", asked.append)
    return asked


def _free(auth: PayerAuth) -> bool:
    """Whether the channel's lock was let go."""
    free = auth._lock.acquire(blocking=False)
    if free:
        auth._lock.release()
    return free


# ------------------------------------------------------------ what is paid

@pytest.mark.parametrize("send", [
    pytest.param(lambda http: http.get("/v1/models"), id="a read"),
    pytest.param(lambda http: http.post("/v1/files", files={"file": ("a.jsonl", b'{"a": 1}')},
                                        data={"purpose": "fine-tune"}), id="an upload"),
    pytest.param(lambda http: http.post("/v1/chat/completions", content=b'{"model": "fake"}'),
                 id="a body not declared JSON"),
    pytest.param(lambda http: http.post("/v1/fine_tuning/jobs/j1/cancel",
                                        headers={"content-type": "application/json"}),
                 id="a JSON post without a body"),
])
def test_only_json_posts_with_a_body_are_paid(send: Callable[[httpx.Client], httpx.Response],
                                              pauses: list[float]) -> None:
    """Reads, uploads, cancels and anything not declared a JSON body go out unpaid, and
    their answer needs no receipt."""
    payer, seen, payment = _Payer(), [], Payment()
    auth = PayerAuth(cast(Payer, payer))
    with _client(auth.paying(payment), _node(httpx.Response(200, json={"ok": True}),
                                             seen=seen)) as http:
        response = send(http)
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert len(seen) == 1 and x402wire.PAYMENT_SIGNATURE not in seen[0]
    assert payer.signed == [] and payer.calls == []
    assert payment.receipt is None
    assert _free(auth)


@pytest.mark.parametrize("maximum", [1, MAX])
def test_a_request_pays_the_maximum_under_the_callers_request_id(maximum: int) -> None:
    """The voucher allows the auth's maximum (one base unit is a maximum too), for the
    request id the caller gave; the receipt is checked for that payment."""
    payer, seen, payment = _Payer(max_per_request=maximum), [], Payment()
    auth = PayerAuth(cast(Payer, payer))
    with _client(auth.paying(payment),
                 _node(httpx.Response(200, json={}, headers=RECEIPT), seen=seen)) as http:
        response = http.post("/v1/chat/completions", json=BODY, headers={"x-request-id": "abc"})
    assert response.status_code == 200 and payment.receipt == "receipt"
    assert [(p.request_id, p.max_amount) for p in payer.signed] == [("abc", maximum)]
    assert seen[0][x402wire.PAYMENT_SIGNATURE] == "voucher-0"
    assert seen[0]["x-request-id"] == "abc"
    assert [c[:2] for c in payer.calls] == [("settle", "abc")]


def test_without_a_maximum_the_first_request_goes_unpaid_and_the_node_names_the_price(
        pauses: list[float]) -> None:
    """With no maximum set, nothing is signed until the node's 402 names the price: then
    exactly that is paid, as a request of its own (a fresh request id)."""
    payer, seen, payment = _Payer(max_per_request=None), [], Payment()
    auth = PayerAuth(cast(Payer, payer))
    node = _node(httpx.Response(402, headers={x402wire.PAYMENT_REQUIRED: _required(300)}),
                 httpx.Response(200, json={}, headers=RECEIPT), seen=seen)
    with _client(auth.paying(payment), node) as http:
        response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200 and payment.receipt == "receipt"
    assert len(seen) == 2 and x402wire.PAYMENT_SIGNATURE not in seen[0]
    assert [(p.request_id, p.max_amount) for p in payer.signed] == [("r0", 300)]
    assert seen[1][x402wire.PAYMENT_SIGNATURE] == "voucher-0"
    assert [c[:2] for c in payer.calls] == [("settle", "r0")]
    assert pauses == [] and _free(auth)


def test_a_node_that_serves_for_free_is_not_paid() -> None:
    """With no maximum set, a node that answers the unpaid request is owed nothing: no
    voucher, and no receipt is asked for."""
    payer, seen, payment = _Payer(max_per_request=None), [], Payment()
    auth = PayerAuth(cast(Payer, payer))
    with _client(auth.paying(payment),
                 _node(httpx.Response(200, json={"ok": True}), seen=seen)) as http:
        response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert payer.signed == [] and payer.calls == [] and len(seen) == 1
    assert payment.receipt is None and _free(auth)


# ------------------------------------------------------------ a node's 402

def test_a_402_is_answered_once_with_a_new_payment(pauses: list[float]) -> None:
    """A node that wants more than the voucher allowed gets one new payment of what it
    asks, under a new request id; its second 402 stands (the node's next answer is never
    asked for). Not a busy channel (no pause), nor a channel to check on chain."""
    payer, seen = _Payer(), []
    auth = PayerAuth(cast(Payer, payer))
    more = httpx.Response(402, headers={x402wire.PAYMENT_REQUIRED: _required(7_000)})
    node = _node(more, more, httpx.Response(200, json={}, headers=RECEIPT), seen=seen)
    with _client(auth, node) as http:
        response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 402
    assert x402wire.decode_payment_required(
        response.headers[x402wire.PAYMENT_REQUIRED]).accepts[0].amount == "7000"
    assert len(seen) == 2
    assert [(p.request_id, p.max_amount) for p in payer.signed] == [("r0", MAX), ("r1", 7_000)]
    assert [r["x-request-id"] for r in seen] == ["r0", "r1"]
    assert payer.calls == [] and pauses == [] and _free(auth)


def test_a_402_with_an_unreadable_payment_required_is_refused_at_once(
        pauses: list[float]) -> None:
    """A 402 whose PAYMENT-REQUIRED cannot be read is no busy channel to wait out: it is
    refused with why, after the one request."""
    payer, seen = _Payer(), []
    auth = PayerAuth(cast(Payer, payer))
    node = _node(httpx.Response(402, headers={x402wire.PAYMENT_REQUIRED: "not base64!"}),
                 seen=seen)
    with _client(auth, node) as http, pytest.raises(
            PaymentError, match=r"^the node's PAYMENT-REQUIRED header is invalid: "
                                r"PAYMENT-REQUIRED is not base64-encoded JSON$"):
        http.post("/v1/chat/completions", json=BODY)
    assert len(seen) == 1 and pauses == [] and len(payer.signed) == 1
    assert _free(auth)


@pytest.mark.parametrize("error", sorted(httpx_auth._CHANNEL_STATE_ERRORS))
def test_a_channel_state_refusal_repairs_the_channel_then_pays_again(
        error: str, pauses: list[float]) -> None:
    """A node that refuses the voucher for the channel's on-chain state has the payer check
    the chain first; once the channel is repaired the payment goes again as it was (its
    maximum: the refusal was about the channel, not the price), as a new request; that is
    the 402's one answer, so a second 402 stands."""
    for answers, status in [((), 200), ((httpx.Response(402, headers={
            x402wire.PAYMENT_REQUIRED: _required(300)}),), 402)]:
        payer, seen = _Payer(repaired="channel 0x11… retired and 0x22… opened"), []
        auth = PayerAuth(cast(Payer, payer))
        refusal = _required(7_000, error)
        node = _node(httpx.Response(402, headers={x402wire.PAYMENT_REQUIRED: refusal}),
                     *answers, httpx.Response(200, json={}, headers=RECEIPT), seen=seen)
        with _client(auth, node) as http:
            response = http.post("/v1/chat/completions", json=BODY)
        assert response.status_code == status
        assert [(p.request_id, p.max_amount) for p in payer.signed] == [("r0", MAX), ("r1", MAX)]
        assert [r["x-request-id"] for r in seen] == ["r0", "r1"]
        settled = [("settle", "r1")] if status == 200 else []
        assert [c[:2] for c in payer.calls] == [("reconcile",), *settled]
        assert pauses == [] and _free(auth)


def test_a_channel_state_refusal_the_chain_does_not_bear_out_is_an_ordinary_402(
        pauses: list[float]) -> None:
    """When the chain agrees with the store (nothing repaired), the node's 402 is answered
    as any other: once, with what it asks."""
    payer, seen = _Payer(repaired=None), []
    auth = PayerAuth(cast(Payer, payer))
    gone = _required(7_000, bs_errors.ERR_CHANNEL_NOT_FOUND)
    node = _node(httpx.Response(402, headers={x402wire.PAYMENT_REQUIRED: gone}),
                 httpx.Response(200, json={}, headers=RECEIPT), seen=seen)
    with _client(auth, node) as http:
        response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200
    assert [(p.request_id, p.max_amount) for p in payer.signed] == [("r0", MAX), ("r1", 7_000)]
    assert [c[:2] for c in payer.calls] == [("reconcile",), ("settle", "r1")]
    assert _free(auth)


# ------------------------------------------------------------ what an answer must carry

@pytest.mark.parametrize("headers", [{}, {"content-type": "application/json"}])
def test_a_paid_answer_without_a_receipt_is_refused(headers: dict[str, str]) -> None:
    payer, seen = _Payer(), []
    auth = PayerAuth(cast(Payer, payer))
    node = _node(httpx.Response(200, content=b'{"ok": true}', headers=headers), seen=seen)
    with _client(auth, node) as http, pytest.raises(
            PaymentError, match=r"^the node answered a paid request without a receipt$"):
        http.post("/v1/chat/completions", json=BODY)
    assert payer.calls == [] and _free(auth)


def test_an_unreadable_payment_response_is_refused_with_why() -> None:
    payer, seen = _Payer(), []
    auth = PayerAuth(cast(Payer, payer))
    node = _node(httpx.Response(200, json={}, headers={x402wire.PAYMENT_RESPONSE: "%%"}),
                 seen=seen)
    with _client(auth, node) as http, pytest.raises(
            PaymentError, match=r"^the node's PAYMENT-RESPONSE header is invalid: "
                                r"PAYMENT-RESPONSE is not base64-encoded JSON$"):
        http.post("/v1/chat/completions", json=BODY)
    assert payer.calls == [] and _free(auth)


def test_a_fine_tuning_jobs_voucher_is_held_not_settled() -> None:
    """A node that holds the voucher for a job answers with ``extra.held``: the payment is
    handed to the payer to hold until the job ends (no receipt yet), left in the
    response for the caller, and the channel is free for the next request."""
    payer, seen, payment = _Payer(), [], Payment()
    auth = PayerAuth(cast(Payer, payer))
    settle = {"success": True, "extra": {"held": True, "requestId": "r0", "maxAmount": str(MAX)}}
    node = _node(httpx.Response(200, json={"id": "ftjob-1"}, headers={
        x402wire.PAYMENT_RESPONSE: x402wire.encode_json(settle)}), seen=seen)
    with _client(auth.paying(payment), node) as http:
        response = http.post("/v1/fine_tuning/jobs", json=BODY)
    assert response.status_code == 200
    assert payer.calls == [("hold", payer.signed[0], settle)]
    assert payment.held is payer.signed[0]
    assert payment.receipt is None
    assert _free(auth)


@pytest.mark.parametrize("extra", [{}, {"held": False}, {"note": "x"}])
def test_an_answer_that_holds_nothing_is_settled(extra: dict[str, Any]) -> None:
    payer, seen, payment = _Payer(), [], Payment()
    auth = PayerAuth(cast(Payer, payer))
    settle = {"success": True, "extra": extra}
    node = _node(httpx.Response(200, json={}, headers={
        x402wire.PAYMENT_RESPONSE: x402wire.encode_json(settle)}), seen=seen)
    with _client(auth.paying(payment), node) as http:
        http.post("/v1/chat/completions", json=BODY)
    assert [c[:2] for c in payer.calls] == [("settle", "r0")]
    assert payment.held is None and _free(auth)


# ------------------------------------------------------------ the terms a receipt is checked at

@pytest.mark.parametrize(("path", "body", "model", "limit", "commitments"), [
    ("/v1/chat/completions", BODY | {"max_tokens": 7}, "fake", 7, False),
    ("/v1/chat/completions", BODY | {"max_completion_tokens": 5, "max_tokens": 9}, "fake", 5,
     False),
    ("/v1/chat/completions", BODY | {"agoranet": {"commitments": True}}, "fake", None, True),
    # a completion's limit is its max_tokens; max_completion_tokens is no field of it
    ("/v1/completions", {"model": "fake", "prompt": "hi", "max_tokens": 7}, "fake", 7, False),
    ("/v1/completions", {"model": "fake", "prompt": "hi", "max_completion_tokens": 7}, "fake",
     None, False),
    # a limit that is no integer is none the node reads
    ("/v1/chat/completions", BODY | {"max_tokens": "7"}, "fake", None, False),
    ("/v1/completions", {"model": "fake", "prompt": "hi", "max_tokens": True}, "fake", None,
     False),
    # a body that names no model (or is no object) is checked against no model
    ("/v1/chat/completions", {"messages": []}, "", None, False),
    ("/v1/chat/completions", [1, 2], "", None, False),
])
def test_a_receipt_is_checked_at_the_terms_the_node_reads_from_the_body(
        path: str, body: Any, model: str, limit: int | None, commitments: bool) -> None:
    payer, seen, payment = _Payer(), [], Payment()
    auth = PayerAuth(cast(Payer, payer))
    with _client(auth.paying(payment),
                 _node(httpx.Response(200, json={}, headers=RECEIPT), seen=seen)) as http:
        http.post(path, json=body)
    assert payment.receipt == "receipt"
    assert payer.calls == [("settle", "r0", model,
                            [("commitments", commitments), ("max_tokens", limit)])]
