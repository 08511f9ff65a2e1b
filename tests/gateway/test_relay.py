"""The relay's routing and money logic against simulated nodes (httpx MockTransport)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.errors import PaymentError, RequestError, UpstreamError
from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.relay import Relay, RelayResult
from agoranet.gateway.spendlog import SpendLog
from agoranet.registry.offer import ModelOffer, Offer, Price

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def node(url: str) -> NodeState:
    offer = Offer(engine="sim", models=[ModelOffer(
        id="m", context_length=64, price=Price(input_per_million=1_000_000,
                                               output_per_million=1_000_000))])
    return NodeState(url, offer=offer)


def sse(words: list[str], *, finish: bool = True, usage: tuple[int, int] | None = None) -> bytes:
    frames = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in words]
    if finish:
        frames.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        frames.append({"choices": [], "usage": {"prompt_tokens": usage[0],
                                                "completion_tokens": usage[1]}})
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    return body + (b"data: [DONE]\n\n" if finish else b"")


async def run(handler: Any, nodes: list[NodeState], tmp_path: Path, budget: Budget,
              payers: Any = None) -> tuple[str, RelayResult, SpendLog]:
    spend = SpendLog(tmp_path / "spend.sqlite")
    candidates = [(n, n.offer.models[0]) for n in nodes]  # type: ignore[union-attr]
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        relay = Relay(client, candidates, BODY, 40, 10, Policy(), spend, payers,
                      request_id="req-1")
        result = relay.result
        text = "".join([p.text async for p in relay.pieces(budget)])
    return text, result, spend


async def test_mid_answer_failure_continues_on_the_next_node(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        if request.url.host == "a":
            return httpx.Response(200, content=sse(["Hello", " there"], finish=False),
                                  headers={"content-type": "text/event-stream"})
        return httpx.Response(200, content=sse([" friend."], usage=(12, 1)),
                              headers={"content-type": "text/event-stream"})

    budget = Budget(limit=1000)
    text, result, spend = await run(handler, [node("http://a/v1"), node("http://b/v1")],
                                    tmp_path, budget)
    assert text == "Hello there friend."
    follow = seen[1]
    assert follow["messages"][-1] == {"role": "assistant", "content": "Hello there"}
    assert follow["continue_final_message"] is True and follow["add_generation_prompt"] is False
    assert follow["max_tokens"] == 8  # 10 minus the two tokens already streamed
    assert result.nodes == ["http://a/v1", "http://b/v1"] and result.failovers == 1
    assert [r.outcome for r in spend.rows("req-1")] == ["partial", "ok"]
    assert budget.reserved == 0 and budget.spent == result.amount == spend.total()


async def test_a_client_fault_is_not_the_nodes_fault(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "bad temperature"}})

    a = node("http://a/v1")
    budget = Budget(limit=1000)
    with pytest.raises(RequestError, match="bad temperature"):
        await run(handler, [a, node("http://b/v1")], tmp_path, budget)
    assert a.failures == 0 and not a.banned()
    assert budget.reserved == 0 and budget.spent == 0


async def test_a_node_the_gateway_cannot_pay_is_skipped(tmp_path: Path) -> None:
    class Payers:
        async def paid(self, n: NodeState, max_amount: int) -> httpx.Auth | None:
            if n.url == "http://a/v1":
                raise PaymentError("cannot open a channel")
            return None

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.host == "b"
        return httpx.Response(200, content=sse(["ok"], usage=(3, 1)),
                              headers={"content-type": "text/event-stream"})

    a = node("http://a/v1")
    budget = Budget(limit=1000)
    text, result, _ = await run(handler, [a, node("http://b/v1")], tmp_path, budget, Payers())
    assert text == "ok" and result.nodes == ["http://b/v1"]
    assert a.failures == 0 and not a.banned()  # the gateway's own trouble, not the node's
    assert budget.reserved == 0


async def test_all_nodes_failing_is_a_503_and_costs_nothing(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "boom"}})

    budget = Budget(limit=1000)
    with pytest.raises(UpstreamError, match="no node could answer") as caught:
        await run(handler, [node("http://a/v1"), node("http://b/v1")], tmp_path, budget)
    assert caught.value.status_code == 503
    assert budget.reserved == 0 and budget.spent == 0
