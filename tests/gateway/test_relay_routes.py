"""Which nodes the relay asks, and what the client hears when none answers, against
simulated nodes: at most ``max_attempts`` nodes; a hedge only when a node is left to race;
a rival the budget cannot cover stays next in line; a 503 that names every node's failure
and every refusal, or says that no node was available; a continuation's reservation that
covers the text so far as prompt."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.errors import CannotPayError, NodesDeclinedError, UpstreamError
from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.relay import Relay, RelayResult
from agoranet.gateway.spendlog import SpendLog
from agoranet.payments.pay.httpx_auth import Payment
from agoranet.registry.offer import AdapterTerms, CommitmentTerms, ModelOffer, Offer, Price
from fake_payers import Paying
from relaying import relay_into
from simnodes import BODY, Delayed, event_stream, node, sse

pytestmark = pytest.mark.timeout(20)

Reply = bytes | httpx.AsyncByteStream | httpx.Response


async def run(replies: dict[str, Reply], tmp_path: Path, policy: Policy | None = None,
              budget: Budget | None = None, payers: Any = None
              ) -> tuple[str, list[str], list[NodeState], RelayResult]:
    nodes = [node(f"http://{host}/v1") for host in replies]
    budget = budget or Budget(limit=10_000)
    spend = SpendLog(tmp_path / "spend.sqlite")
    result = RelayResult("req-1")
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        reply = replies[request.url.host]
        return reply if isinstance(reply, httpx.Response) else event_stream(reply)

    try:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            text = "".join([p.text async for p in relay_into(result, client, [(n, n.offer.models[0]) for n in nodes], BODY, 40, 10, policy or Policy(), spend, payers).pieces(budget)])
    finally:
        assert budget.reserved == 0 and budget.spent == spend.total() == result.amount
        spend.close()
    return text, asked, nodes, result


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message}})


async def test_no_more_nodes_are_asked_than_the_policy_allows(tmp_path: Path) -> None:
    with pytest.raises(UpstreamError) as caught:
        await run({"a": error(500, "boom"), "b": sse(["never"])}, tmp_path,
                  Policy(max_attempts=1))
    assert str(caught.value) == "no node could answer: http://a/v1: HTTP 500: boom"


async def test_the_503_names_each_failure_and_each_refusal(tmp_path: Path) -> None:
    with pytest.raises(UpstreamError) as caught:
        await run({"a": error(500, "boom"), "b": error(404, "no such model")}, tmp_path)
    assert caught.value.status_code == 503
    assert str(caught.value) == "no node could answer: http://a/v1: HTTP 500: boom; " \
        "no such model"


async def test_with_no_node_at_all_the_503_says_so(tmp_path: Path) -> None:
    with pytest.raises(UpstreamError) as caught:
        await run({}, tmp_path)
    assert (caught.value.status_code, str(caught.value)) == \
        (503, "no node could answer: none available")


async def test_a_lone_slow_node_is_waited_for_not_hedged(tmp_path: Path) -> None:
    text, asked, _, _ = await run({"a": Delayed(sse(["late"], usage=(5, 1)), 0.1)}, tmp_path,
                                  Policy(hedge_after_ms=10))
    assert text == "late" and asked == ["a"]


async def test_a_rival_the_budget_could_not_cover_is_next_in_line(tmp_path: Path) -> None:
    """The budget holds one worst case (58): no hedge is sent; the first node then fails,
    and the node that could not race is the one asked next."""
    broken = Delayed(b'data: {"error": {"message": "oom"}}\n\n', 0.1)
    text, asked, (a, _), _ = await run(
        {"a": broken, "b": sse(["ok"], usage=(5, 1))}, tmp_path, Policy(hedge_after_ms=10),
        Budget(limit=100))
    assert text == "ok" and asked == ["a", "b"] and a.failures == 1


async def test_a_continuations_reservation_counts_the_text_so_far_as_prompt(
        tmp_path: Path) -> None:
    paying = Paying({"a": 2}, default=3)

    text, _, _, result = await run({"a": sse(["Hello", " there"], finish=False),
                                    "b": sse(["!"], usage=(20, 1))}, tmp_path, payers=paying)
    assert text == "Hello there!" and result.amount == 2 + 3
    # a: (40 + 8) prompt + 10 completion; b: (40 + 11 bytes + 8) prompt + 8 completion
    assert paying.maxima == [58, 67]



async def test_a_tool_call_piece_carries_no_text(tmp_path: Path) -> None:
    call = [{"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": "{}"}}]
    frames = [{"choices": [{"index": 0, "delta": {"content": None, "tool_calls": call}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    a = node("http://a/v1")
    spend = SpendLog(tmp_path / "spend.sqlite")
    result = RelayResult("req-1")
    async with httpx.AsyncClient(transport=httpx.MockTransport(
            lambda request: event_stream(body))) as client:
        pieces = [p async for p in relay_into(result, client, [(a, a.offer.models[0])], BODY, 40, 10, Policy(), spend).pieces(Budget(limit=1000))]
    assert [(p.text, p.node, p.tool_calls) for p in pieces] == [("", a.url, call)]
    assert result.finish_reason == "tool_calls"


def surcharged(url: str) -> NodeState:
    """Prompt tokens cost 1 + 1 (adapter) + 3 (commitments), completion tokens 1 + 2 + 3."""
    offer = Offer(engine="sim", models=[ModelOffer(
        id="m", context_length=64, price=Price(input_per_million=10**6,
                                               output_per_million=10**6),
        adapters=AdapterTerms(accepted=True, surcharge=Price(
            input_per_million=10**6, output_per_million=2 * 10**6)),
        commitments=CommitmentTerms(offered=True, price_per_million=3 * 10**6))])
    return NodeState(url, offer=offer)


@pytest.mark.parametrize(("model", "commitments", "worst"), [
    ("m", False, 48 + 10),
    ("m@adapter:" + "ab" * 32, False, 48 * 2 + 10 * 3),
    ("m", True, 48 * 4 + 10 * 4),
    ("m@adapter:" + "ab" * 32, True, 48 * 5 + 10 * 6),
])
async def test_the_reservation_covers_the_surcharges_asked_for(
        model: str, commitments: bool, worst: int, tmp_path: Path) -> None:
    paying = Paying({"a": 2}, default=3)

    a = surcharged("http://a/v1")
    async with httpx.AsyncClient(transport=httpx.MockTransport(
            lambda request: event_stream(sse(["ok"], usage=(3, 1))))) as client:
        [_ async for _ in Relay(client, [(a, a.offer.models[0])], {**BODY, "model": model}, 40, 10, Policy(commitments=commitments), SpendLog(tmp_path / "spend.sqlite"), paying, request_id="req-1").pieces(Budget(limit=10_000))]
    assert paying.maxima == [worst]


async def test_a_constrained_answer_restarted_whole_reserves_for_all_of_it(
        tmp_path: Path) -> None:
    paying = Paying({"a": 2}, default=3)

    replies = {"a": sse(['{"x"', ": 1"], finish=False), "b": sse(['{"x": 1}'], usage=(5, 1))}
    nodes = [node("http://a/v1"), node("http://b/v1")]
    async with httpx.AsyncClient(transport=httpx.MockTransport(
            lambda request: event_stream(replies[request.url.host]))) as client:
        text = "".join([p.text async for p in Relay(client, [(n, n.offer.models[0]) for n in nodes], BODY, 40, 10, Policy(), SpendLog(tmp_path / "spend.sqlite"), paying, request_id="req-1", constrained=True).pieces(Budget(limit=10_000))])
    assert text == '{"x": 1}'
    assert paying.maxima == [58, 58]  # b answers from the start: all 10 tokens


async def test_each_failover_is_counted(tmp_path: Path) -> None:
    text, asked, nodes, result = await run({
        "a": sse(["One"], finish=False), "b": sse([" two"], finish=False),
        "c": sse([" three."], usage=(5, 1))}, tmp_path)
    assert text == "One two three." and asked == ["a", "b", "c"]
    assert result.failovers == 2 and [n.failures for n in nodes] == [1, 1, 0]


async def test_a_client_hanging_up_while_a_channel_opens_releases_the_reservation(
        tmp_path: Path) -> None:
    opening = asyncio.Event()

    class Payers:
        async def paid(self, n: NodeState, max_amount: int) -> httpx.Auth | None:
            opening.set()
            await asyncio.Event().wait()  # a deposit being mined, for ever
            return None

    a = node("http://a/v1")
    budget = Budget(limit=10_000)
    spend = SpendLog(tmp_path / "spend.sqlite")

    async def ask() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(
                lambda request: event_stream(sse(["never"])))) as client:
            async for _ in Relay(client, [(a, a.offer.models[0])], BODY, 40, 10, Policy(), spend, Payers(), request_id="req-1").pieces(budget):  # type: ignore[arg-type]
                pass

    task = asyncio.ensure_future(ask())
    await opening.wait()
    assert budget.reserved == 58
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()  # the hang-up goes on as one, nothing else raised
    assert budget.reserved == 0 and budget.spent == 0 and a.failures == 0
    spend.close()


async def test_when_both_racers_fail_the_next_node_is_asked(tmp_path: Path) -> None:
    broken = Delayed(b'data: {"error": {"message": "oom"}}\n\n', 0.1)
    text, asked, nodes, _ = await run(
        {"a": broken, "b": error(500, "boom"), "c": sse(["ok"], usage=(5, 1))}, tmp_path,
        Policy(hedge_after_ms=10))
    assert text == "ok" and asked == ["a", "b", "c"]
    assert [n.failures for n in nodes] == [1, 1, 0]


async def test_each_continuation_carries_all_the_text_so_far(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    replies = {"a": sse(["One"], finish=False), "b": sse([" two"], finish=False),
               "c": sse([" three."], usage=(5, 1))}
    nodes = [node(f"http://{host}/v1") for host in replies]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return event_stream(replies[request.url.host])

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        text = "".join([p.text async for p in Relay(client, [(n, n.offer.models[0]) for n in nodes], BODY, 40, 10, Policy(), SpendLog(tmp_path / "spend.sqlite"), request_id="req-1").pieces(Budget(limit=10_000))])
    assert text == "One two three."
    assert [s["messages"][-1]["content"] for s in seen[1:]] == ["One", "One two"]
    assert [s["max_tokens"] for s in seen[1:]] == [9, 8]


async def test_a_node_the_gateway_cannot_pay_mid_request_is_a_503_naming_why(
        tmp_path: Path) -> None:
    class Payers:
        async def paid(self, n: NodeState, max_amount: int) -> httpx.Auth:
            return CannotPay()

    with pytest.raises(NodesDeclinedError) as caught:
        await run({"a": sse(["never"])}, tmp_path, payers=Payers())
    assert (caught.value.status_code, caught.value.code) == (503, "cannot_pay")
    assert str(caught.value) == "the gateway cannot pay the node at http://a/v1: the channel " \
        "cannot be topped up"


class CannotPay(httpx.Auth):
    def __init__(self) -> None:
        self.payment = Payment()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise CannotPayError("the channel cannot be topped up")
        yield request  # pragma: no cover - makes this a generator


async def test_racers_that_both_decline_tell_the_client_why(tmp_path: Path) -> None:
    class Payers:
        async def paid(self, n: NodeState, max_amount: int) -> httpx.Auth | None:
            return CannotPay() if n.url == "http://b/v1" else None

    def slow_404() -> httpx.Response:  # its body comes late: the hedge is sent meanwhile
        return httpx.Response(404, stream=Delayed(
            json.dumps({"error": {"message": "no such model"}}).encode(), 0.1))

    hedged = Policy(hedge_after_ms=10)
    with pytest.raises(NodesDeclinedError) as caught:
        await run({"a": slow_404(), "b": error(404, "no such adapter")}, tmp_path, hedged)
    assert (caught.value.status_code, caught.value.code) == (404, "model_not_found")
    assert str(caught.value) == "no such adapter; no such model"
    with pytest.raises(NodesDeclinedError) as caught:
        await run({"a": slow_404(), "b": sse(["never"])}, tmp_path / "pay", hedged,
                  payers=Payers())
    assert (caught.value.status_code, caught.value.code) == (503, "cannot_pay")
    assert str(caught.value) == "the gateway cannot pay the node at http://b/v1: the channel " \
        "cannot be topped up; no such model"


async def test_usage_without_a_prompt_count_and_no_tokens_charges_no_prompt(
        tmp_path: Path) -> None:
    stop = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {"choices": [], "usage": {"completion_tokens": 0}}
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in (stop, usage))
    text, _, _, result = await run({"a": body}, tmp_path)
    assert text == "" and (result.prompt_tokens, result.amount) == (0, 0)
