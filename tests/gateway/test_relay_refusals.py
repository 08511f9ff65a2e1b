"""What the client is told, and what a node is blamed for, when nodes refuse or fail.

Refusals that are not the node's fault (it does not serve the model, the gateway cannot
pay it) are skipped without counting against it, and if every node declines the client
gets the most useful reason (402 before 503 before 404) with each distinct message once.
A node's own failures (an HTTP error, an error event, an event of the wrong shape, a
transport error, a bad receipt) are described in words, without class names, in its
record and in the 503 the client gets when no node could answer. Every case ends with
the budget's reservation released and nothing spent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.errors import (
    NodesDeclinedError,
    PaymentError,
    ReceiptError,
    RequestError,
    UpstreamError,
)
from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.relay import Relay, RelayResult
from agoranet.gateway.spendlog import SpendLog
from agoranet.payments.pay.httpx_auth import Payment
from agoranet.registry.offer import Offer, PaymentOffer
from simnodes import BODY, Stalling, event_stream, node, sse

pytestmark = pytest.mark.timeout(20)

Handler = Callable[[httpx.Request], httpx.Response]
UNPAYABLE = ("the node at {} sells for payment and this gateway has no wallet to pay it: "
             "start the gateway with --keystore and --rpc-url (and a --deposit), or allow "
             "only free nodes")
TERMS = PaymentOffer(schemes=["batch-settlement"], network="eip155:31337",
                     asset="0x" + "11" * 20, pay_to="0x" + "22" * 20,
                     receiver_authorizer="0x" + "22" * 20, withdraw_delay=3600,
                     min_deposit=0, token_name="USD", token_version="1")


def paid(url: str) -> NodeState:
    state = node(url)
    assert state.offer is not None
    state.offer = Offer(engine="sim", models=state.offer.models, payment=TERMS)
    return state


class Payers:
    """Stands in for the gateway's payers: ``refuse`` names the hosts it cannot pay;
    ``auths`` the hosts it pays, each with its own auth; the others are free."""

    def __init__(self, refuse: dict[str, Exception] | None = None,
                 auths: dict[str, httpx.Auth] | None = None) -> None:
        self.refuse = refuse or {}
        self.auths = auths or {}

    async def paid(self, n: NodeState, max_amount: int) -> httpx.Auth | None:
        host = n.url.split("/")[2]
        if host in self.refuse:
            raise self.refuse[host]
        return self.auths.get(host)


class BadReceipt(httpx.Auth):
    """A payer that finds the node's receipt wrong once the answer is over."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.payment = Payment()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        response = yield request
        await response.aread()
        raise ReceiptError(self.message)


async def run(handler: Handler, nodes: list[NodeState], tmp_path: Path,
              payers: Any = None, policy: Policy | None = None
              ) -> tuple[str, RelayResult, Budget]:
    budget = Budget(limit=10_000)
    spend = SpendLog(tmp_path / "spend.sqlite")
    candidates = [(n, n.offer.models[0]) for n in nodes]  # type: ignore[union-attr]
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    relay = Relay(client, candidates, BODY, 40, 10, policy or Policy(), spend, payers,
                  request_id="req-1")
    result = relay.result
    try:
        async with client:
            text = "".join([p.text async for p in relay.pieces(budget)])
    finally:
        assert budget.reserved == 0  # every way out releases the reservation
        assert budget.spent == spend.total() == result.amount
        spend.close()
    return text, result, budget


def answer(request: httpx.Request) -> httpx.Response:
    return event_stream(sse(["ok"], usage=(3, 1)))


def error(status: int, message: str) -> Handler:
    return lambda request: httpx.Response(status, json={"error": {"message": message}})


def by_host(**handlers: Handler) -> Handler:
    return lambda request: handlers[request.url.host](request)


async def declined(handler: Handler, nodes: list[NodeState], tmp_path: Path,
                   payers: Any = None) -> NodesDeclinedError:
    with pytest.raises(NodesDeclinedError) as caught:
        await run(handler, nodes, tmp_path, payers)
    assert all(n.failures == 0 and not n.banned() for n in nodes)  # none was at fault
    return caught.value


# ------------------------------------------------------------ not the node's fault

async def test_a_paid_node_is_skipped_by_a_gateway_without_a_wallet(tmp_path: Path) -> None:
    a = paid("http://a/v1")
    text, result, budget = await run(by_host(b=answer), [a, node("http://b/v1")], tmp_path)
    assert text == "ok" and result.nodes == ["http://b/v1"] and budget.spent == 4
    assert a.failures == 0 and not a.banned()
    refused = await declined(by_host(), [paid("http://a/v1")], tmp_path / "alone")
    assert (refused.status_code, refused.code) == (402, "payment_required")
    assert str(refused) == UNPAYABLE.format("http://a/v1")


async def test_a_402_to_a_gateway_that_does_not_pay_that_node_says_how_to_pay(
        tmp_path: Path) -> None:
    refused = await declined(error(402, "pay me"), [node("http://a/v1")], tmp_path)
    assert (refused.status_code, refused.code) == (402, "payment_required")
    assert str(refused) == UNPAYABLE.format("http://a/v1")


async def test_a_node_the_gateway_cannot_pay_is_a_503_naming_why(tmp_path: Path) -> None:
    payers = Payers(refuse={"a": PaymentError("no channel could be opened")})
    refused = await declined(by_host(), [paid("http://a/v1")], tmp_path, payers)
    assert (refused.status_code, refused.code) == (503, "cannot_pay")
    assert str(refused) == "the gateway cannot pay the node at http://a/v1: no channel " \
        "could be opened"


async def test_the_client_gets_the_most_useful_refusal_each_distinct_message_once(
        tmp_path: Path) -> None:
    """Not served (404) < cannot pay (503) < no wallet (402), whatever the order."""
    missing = error(404, "model m not found")
    cannot = Payers(refuse={"b": PaymentError("chain down")})
    hosts = ["a", "b", "c", "d"]  # 404, 503, 402, 404 again (the same words)
    refused = await declined(by_host(a=missing, c=error(402, "pay"), d=missing),
                             [node(f"http://{h}/v1") for h in hosts], tmp_path, cannot)
    assert (refused.status_code, refused.code) == (402, "payment_required")
    assert str(refused) == "; ".join([
        "model m not found", "the gateway cannot pay the node at http://b/v1: chain down",
        UNPAYABLE.format("http://c/v1")])
    refused = await declined(by_host(a=missing), [node("http://a/v1"), node("http://b/v1")],
                             tmp_path / "two", cannot)
    assert (refused.status_code, refused.code) == (503, "cannot_pay")
    refused = await declined(by_host(a=missing, b=error(404, "no such adapter")),
                             [node("http://a/v1"), node("http://b/v1")], tmp_path / "404")
    assert (refused.status_code, refused.code) == (404, "model_not_found")
    assert str(refused) == "model m not found; no such adapter"


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_a_request_every_node_would_refuse_goes_back_with_the_nodes_status(
        status: int, tmp_path: Path) -> None:
    a = node("http://a/v1")
    with pytest.raises(RequestError) as caught:
        await run(error(status, "too long"), [a, node("http://b/v1")], tmp_path)
    assert caught.value.status_code == status and str(caught.value) == "too long"
    assert a.failures == 0


# ------------------------------------------------------------ the node's own failures

async def failed(handler: Handler, tmp_path: Path, payers: Any = None,
                 policy: Policy | None = None) -> str:
    """The one node's failure, as the client's 503 and the node's record say it."""
    a = node("http://a/v1")
    with pytest.raises(UpstreamError) as caught:
        await run(handler, [a], tmp_path, payers, policy)
    assert caught.value.status_code == 503 and a.failures == 1 and a.banned()
    reason = str(caught.value).removeprefix("no node could answer: http://a/v1: ")
    assert _event(a).startswith(f"{reason} (banned ")
    return reason


def _event(n: NodeState) -> str:
    """The node's last event, without its time of day."""
    return n.events[-1].split(" ", 1)[1]


def events(*frames: object) -> Handler:
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    return lambda request: event_stream(body)


async def test_an_http_error_is_described_by_the_nodes_own_message(tmp_path: Path) -> None:
    assert await failed(error(500, "boom"), tmp_path) == "HTTP 500: boom"
    page = "x" * 300 + "TAIL"  # not an error JSON: the start of the body
    assert await failed(lambda r: httpx.Response(502, text=page), tmp_path / "page") == \
        "HTTP 502: " + "x" * 300
    assert await failed(lambda r: httpx.Response(503, json={"detail": "busy"}),
                        tmp_path / "other") == 'HTTP 503: {"detail":"busy"}'


async def test_an_error_event_mid_stream_fails_the_node_with_its_message(
        tmp_path: Path) -> None:
    first = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    assert await failed(events(first, {"error": {"message": "overloaded"}}), tmp_path) == \
        "error mid-stream: overloaded"
    assert await failed(events({"error": "out of memory"}), tmp_path / "text") == \
        "error mid-stream: out of memory"
    assert await failed(events({"error": {"message": "y" * 400}}), tmp_path / "long") == \
        "error mid-stream: " + "y" * 300


@pytest.mark.parametrize(("event", "wrong"), [
    ({"usage": 7}, "usage"),
    ({"agoranet": [], "choices": "ab"}, "agoranet, choices"),
    ({"choices": ["ab"]}, "choices"),
    ({"choices": [{"index": 0, "delta": "ab"}]}, "choices"),
    ({"choices": [{"index": 0, "delta": {}, "logprobs": 5}]}, "choices"),
    ({"choices": [{"index": 0, "delta": {}, "finish_reason": 5}]}, "choices"),
    ({"choices": [{"index": 0, "delta": {"content": 5}}]}, "choices"),
    ({"choices": [{"index": 0, "delta": {"tool_calls": {}}}]}, "choices"),
    ({"choices": [], "usage": {"prompt_tokens": -1, "completion_tokens": True}},
     "usage.prompt_tokens, usage.completion_tokens"),
    ({"agoranet": 1, "choices": [], "usage": {"prompt_tokens": "3"}},
     "agoranet, usage.prompt_tokens"),
])
async def test_an_event_with_fields_of_the_wrong_type_fails_the_node(
        event: dict[str, Any], wrong: str, tmp_path: Path) -> None:
    assert await failed(events(event), tmp_path) == \
        f"an SSE event has fields of the wrong type: {wrong}"


async def test_an_event_that_is_not_a_json_object_fails_the_node(tmp_path: Path) -> None:
    def sent(data: bytes) -> Handler:
        return lambda request: event_stream(b"data: " + data + b"\n\n")

    assert (await failed(sent(b"{not json"), tmp_path)).startswith(
        "an SSE event is not valid JSON: ")
    assert await failed(sent(b"[1, 2]"), tmp_path / "list") == \
        "an SSE event must be a JSON object"


@pytest.mark.parametrize(("sent", "policy", "reason"), [
    ([], Policy(first_token_timeout_s=0.05), "no first token in time"),
    ([b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'],
     Policy(token_timeout_s=0.05), "stalled: no token for 0.05 s"),
])
async def test_a_node_past_the_gateways_deadline_fails(
        sent: list[bytes], policy: Policy, reason: str, tmp_path: Path) -> None:
    assert await failed(lambda request: event_stream(Stalling(sent)), tmp_path,
                        policy=policy) == reason


async def test_counts_of_zero_are_counts(tmp_path: Path) -> None:
    a = node("http://a/v1")
    text, _, budget = await run(events(
        {"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0}},
        {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}), [a], tmp_path)
    assert text == "ok" and a.failures == 0 and budget.spent == 4


@pytest.mark.parametrize(("raised", "reason"), [
    (httpx.ReadTimeout("read stalled"), "timed out (read stalled)"),
    (httpx.ReadTimeout(""), "timed out (no answer in time)"),
    (httpx.ConnectError("refused"), "connection failed (refused)"),
    (httpx.ConnectError(""), "connection failed (no answer)"),
])
async def test_a_transport_error_is_described_in_words(raised: Exception, reason: str,
                                                       tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    assert await failed(handler, tmp_path) == reason


@pytest.mark.parametrize(("message", "reason"), [
    ("amount 9 is not what was signed", "bad receipt: amount 9 is not what was signed"),
    ("the node's Receipt is signed by another key", "the node's Receipt is signed by another key"),
])
async def test_a_bad_receipt_is_named_so(message: str, reason: str, tmp_path: Path) -> None:
    """A receipt found wrong before the answer was passed on fails the node over to the
    next; its record names a receipt (the reputation store counts it as a receipt
    disagreement), and nothing is paid for it."""
    a, b = node("http://a/v1"), node("http://b/v1")
    text, result, budget = await run(
        answer, [a, b], tmp_path, Payers(auths={"a": BadReceipt(message)}))
    assert text == "ok" and result.nodes == [b.url] and budget.spent == 4  # b's price list
    assert a.failures == 1 and _event(a).startswith(f"{reason} (banned ")
    assert b.failures == 0
