"""What the paying client reads from a paid stream's receipt events: a receipt event (final
or running) that carries no payment response is refused with why (ReceiptError), never
taken for a receipt: the stream counts as cut before its receipt, so what the node can
charge for the tokens that arrived is counted as spent (Payer.cut), and the lock on the
channel is let go. The auth flow's stream
reader alone, with a payer double and a node answered by ``httpx.MockTransport`` (real
nodes' streams: tests/payments/test_payer_stream_chunks.py, test_payer_cut_streams.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest

from agoranet.errors import ReceiptError
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer, PendingPayment

BODY = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


class _Payer:
    """Signs a voucher and records what the reader hands it."""

    max_per_request = 5_000

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pay(self, amount: int, request_id: str | None = None) -> PendingPayment:
        return PendingPayment(request_id or "r0", amount, amount, 0, "voucher")

    def settle(self, pending: PendingPayment, response: dict[str, Any], model: str,
               **terms: Any) -> str:
        self.calls.append(f"settle {response['receipt']} for {model}: {sorted(terms.items())}")
        return f"final {response['receipt']}"

    def check(self, pending: PendingPayment, response: dict[str, Any], model: str,
              **terms: Any) -> SimpleNamespace:
        self.calls.append(f"check {response['receipt']} for {model}: {sorted(terms.items())}")
        return SimpleNamespace(amount=response["receipt"], request_id=pending.request_id)

    def cut(self, pending: PendingPayment, running: Any, model: str, *, arrived: int,
            usage: tuple[int, int] | None = None, **terms: Any) -> int:
        self.calls.append(f"cut after {arrived} tokens")
        self.usage, self.cut_terms = usage, (running, model, sorted(terms.items()))
        return 7


def _stream(*events: dict[str, Any]) -> httpx.MockTransport:
    frames = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    return httpx.MockTransport(lambda _: httpx.Response(  # streamed, frame by frame
        200, content=iter(frames), headers={"content-type": "text/event-stream"}))


@pytest.mark.parametrize("kind", ["agoranet.receipt", "agoranet.receipt.running"])
@pytest.mark.parametrize("carried", [None, "a receipt", ["a", "list"]])
def test_a_receipt_event_without_a_payment_response_is_refused(kind: str, carried: Any) -> None:
    payer = _Payer()
    auth = PayerAuth(cast(Payer, payer))
    payment = Payment()
    event: dict[str, Any] = {"object": kind}
    if carried is not None:
        event["x402_payment_response"] = carried
    chunk = {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "hi"}}]}
    http = httpx.Client(base_url="http://node", auth=auth.paying(payment),
                        transport=_stream(chunk, event))
    with http, http.stream("POST", "/v1/chat/completions", json=BODY) as response, \
            pytest.raises(ReceiptError,
                          match=r"^the node's receipt event has no payment response$"):
        response.read()
    # nothing checked or believed: a stream cut before its receipt, what arrived is spent
    assert payer.calls == ["cut after 1 tokens"]
    assert payment.unreceipted == 7
    assert payment.receipt is None
    assert auth._lock.acquire(blocking=False)  # the channel's lock was let go


def _chunk(text: str, usage: Any = None) -> dict[str, Any]:
    event: dict[str, Any] = {"object": "chat.completion.chunk",
                             "choices": [{"delta": {"content": text}}] if text else []}
    if usage is not None:
        event["usage"] = usage
    return event


@pytest.mark.parametrize(("events", "usage"), [
    ([_chunk("a"), _chunk("b")], None),  # no usage came
    ([_chunk("a", {"prompt_tokens": 9, "completion_tokens": 1}), _chunk("b")], (9, 1)),
    # counts sent before the first token: none of the answer yet, and that is a count
    ([_chunk("", {"prompt_tokens": 9, "completion_tokens": 0}), _chunk("a"), _chunk("b")],
     (9, 0)),
    # the last readable counts stand; counts that are not counts do not replace them
    ([_chunk("a", {"prompt_tokens": 9, "completion_tokens": 1}), _chunk("b"),
      _chunk("", {"prompt_tokens": 9, "completion_tokens": 2}),
      _chunk("", {"prompt_tokens": -1, "completion_tokens": 3}),
      _chunk("", {"prompt_tokens": 9, "completion_tokens": "3"}), _chunk("", "no usage")], (9, 2)),
])
def test_a_cut_stream_hands_the_payer_the_token_counts_it_saw(
        events: list[dict[str, Any]], usage: tuple[int, int] | None) -> None:
    """A stream that ends without its final receipt is cut: the payer is told how many
    tokens arrived and the answer's (prompt, completion) counts, if the node sent them
    (they bound what the node can charge beyond the last receipt)."""
    payer = _Payer()
    auth = PayerAuth(cast(Payer, payer))
    payment = Payment()
    with httpx.Client(base_url="http://node", auth=auth.paying(payment),
                        transport=_stream(*events)) as http:
        response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200
    assert payer.calls == ["cut after 2 tokens"] and payer.usage == usage
    assert payer.cut_terms == (None, "fake", [("commitments", False), ("max_tokens", None)])
    assert payment.unreceipted == 7
    assert auth._lock.acquire(blocking=False)


@pytest.mark.parametrize(("extra", "limit", "commitments"), [
    ({"max_tokens": 6}, 6, False),
    ({"max_completion_tokens": 4, "agoranet": {"commitments": True}}, 4, True),
    ({}, None, False),
])
def test_a_streams_receipts_are_checked_against_its_terms_and_what_arrived(
        extra: dict[str, Any], limit: int | None, commitments: bool) -> None:
    """Each running receipt may count no more tokens than have arrived, the final one no
    fewer; both within the request's limit, at its model's prices (with the commitments
    surcharge when it asked for them)."""
    payer = _Payer()
    auth = PayerAuth(cast(Payer, payer))
    payment = Payment()
    events = [_chunk("a"), {"object": "agoranet.receipt.running",
                            "x402_payment_response": {"receipt": 10}},
              _chunk("b"), _chunk("c"), {"object": "agoranet.receipt.running",
                                         "x402_payment_response": {"receipt": 30}},
              {"object": "agoranet.receipt", "x402_payment_response": {"receipt": 40}}]
    with httpx.Client(base_url="http://node", auth=auth.paying(payment),
                        transport=_stream(*events)) as http:
        response = http.post("/v1/chat/completions", json=BODY | extra)
    assert response.status_code == 200
    terms = [("commitments", commitments), ("max_tokens", limit)]
    assert payer.calls == [
        f"check 10 for fake: {sorted([*terms, ('max_tokens_out', 1)])}",
        f"check 30 for fake: {sorted([*terms, ('max_tokens_out', 3)])}",
        f"settle 40 for fake: {sorted([*terms, ('min_tokens_out', 3)])}",
    ]
    assert payment.receipt == "final 40"
    assert payment.unreceipted == 0  # not cut: nothing counted
    assert auth._lock.acquire(blocking=False)


def test_a_running_receipt_may_stay_level_but_never_go_down() -> None:
    """A running receipt that charges what the last one did (no token charged since) is
    fine; one that charges less is refused, and the stream counts as cut after the last
    running receipt that was believed, at the request's terms."""
    payer = _Payer()
    auth = PayerAuth(cast(Payer, payer))
    payment = Payment()

    def running(amount: int) -> dict[str, Any]:
        return {"object": "agoranet.receipt.running", "x402_payment_response": {"receipt": amount}}

    events = [_chunk("a"), running(10), running(10), _chunk("b"), running(9), _chunk("c")]
    http = httpx.Client(base_url="http://node", auth=auth.paying(payment),
                        transport=_stream(*events))
    body = BODY | {"max_tokens": 5, "agoranet": {"commitments": True}}
    with http, http.stream("POST", "/v1/chat/completions", json=body) as response, \
            pytest.raises(ReceiptError, match=r"^running receipt r0 went down$"):
        response.read()
    terms = [("commitments", True), ("max_tokens", 5)]
    assert payer.calls == [f"check 10 for fake: {sorted([*terms, ('max_tokens_out', 1)])}"] * 2 \
        + [f"check 9 for fake: {sorted([*terms, ('max_tokens_out', 2)])}", "cut after 2 tokens"]
    kept, model, cut_terms = payer.cut_terms
    assert (kept.amount, model, cut_terms) == (10, "fake", terms)
    assert payment.receipt is kept  # the last one believed
    assert payment.unreceipted == 7
    assert auth._lock.acquire(blocking=False)


def test_frames_that_carry_no_token_do_not_count_as_arrived() -> None:
    """What arrived bounds what a cut stream may cost: a frame counts only if a choice in it
    carries a token (text, a piece of a tool call, or a token's logprobs); junk a node
    sends in its place counts for nothing."""
    payer = _Payer()
    auth = PayerAuth(cast(Payer, payer))
    events = [_chunk("a"), {"choices": ["b", 1, None]}, {"choices": [{"delta": "c"}]},
              {"choices": [{"delta": {"content": ""}}]}, {"choices": [{"text": ""}]},
              {"choices": [{"delta": {}, "logprobs": "d"}]}, {"choices": "e"},
              {"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]},
              {"choices": [{"text": "f"}]},
              {"choices": [{"delta": {}, "logprobs": {"content": [{"token": ""}]}}]}]
    with httpx.Client(base_url="http://node", auth=auth, transport=_stream(*events)) as http:
        response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200
    assert payer.calls == ["cut after 4 tokens"]  # a, the tool call, f, the empty token
