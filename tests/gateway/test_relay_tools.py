"""Tool calls and JSON through the relay and the ranking, against simulated nodes:
capabilities in offers, routing by them, a constrained answer passed on whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from agoranet.api.types import ChatCompletionRequest
from agoranet.engines import capabilities as caps
from agoranet.gateway.budget import Budget
from agoranet.gateway.capabilities import needs_of
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.ranking import rank
from agoranet.gateway.relay import Piece, Relay, RelayResult
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.toolcalls import join_call_deltas
from agoranet.registry.offer import ModelOffer, Offer, Price
from agoranet.registry.signing import offer_signer, sign_offer

TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
        "tools": [TOOL], "tool_choice": "required"}


def node(url: str, capabilities: list[str] | None = None) -> NodeState:
    offer = Offer(engine="sim", models=[ModelOffer(
        id="m", context_length=64, capabilities=capabilities,
        price=Price(input_per_million=1_000_000, output_per_million=1_000_000))])
    return NodeState(url, offer=offer)


def call_frames(arguments: list[str], *, call_id: str, finish: bool = True,
                usage: tuple[int, int] | None = None) -> bytes:
    frames: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": {
        "role": "assistant", "content": ""}}]}]
    for i, part in enumerate(arguments):
        delta: dict[str, Any] = {"index": 0, "function": {"arguments": part}}
        if i == 0:
            delta.update(id=call_id, type="function", function={"name": "f", "arguments": part})
        frames.append({"choices": [{"index": 0, "delta": {"content": None,
                                                          "tool_calls": [delta]}}]})
    if finish:
        frames.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    if usage:
        frames.append({"choices": [], "usage": {"prompt_tokens": usage[0],
                                                "completion_tokens": usage[1]}})
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    return body + (b"data: [DONE]\n\n" if finish else b"")


async def run(handler: Any, nodes: list[NodeState], tmp_path: Path, budget: Budget, *,
              constrained: bool, body: dict[str, Any] | None = None
              ) -> tuple[list[Piece], RelayResult, SpendLog]:
    spend = SpendLog(tmp_path / "spend.sqlite")
    candidates = [(n, n.offer.models[0]) for n in nodes]  # type: ignore[union-attr]
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        relay = Relay(client, candidates, body or BODY, 40, 10, Policy(), spend,
                      request_id="req-1", constrained=constrained)
        result = relay.result
        pieces = [p async for p in relay.pieces(budget)]
    return pieces, result, spend


def stream(content: bytes) -> httpx.Response:
    return httpx.Response(200, content=content, headers={"content-type": "text/event-stream"})


async def test_a_call_broken_off_is_restarted_whole_on_the_next_node(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if request.url.host == "a":  # dies after half the arguments
            return stream(call_frames(['{"x": ', "12"], call_id="call_a", finish=False))
        return stream(call_frames(['{"x": ', "7}"], call_id="call_b", usage=(12, 2)))

    budget = Budget(limit=1000)
    pieces, result, spend = await run(handler, [node("http://a/v1"), node("http://b/v1")],
                                      tmp_path, budget, constrained=True)
    # Only the second node's call reaches the client, its deltas as the node sent them.
    assert [p.node for p in pieces] == ["http://b/v1"] * 2
    [call] = join_call_deltas(d for p in pieces for d in p.tool_calls or ())
    assert call == {"id": "call_b", "type": "function",
                    "function": {"name": "f", "arguments": '{"x": 7}'}}
    assert result.finish_reason == "tool_calls"
    # The next node is asked the original request again, not to continue half a call.
    assert seen[1] == {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    assert result.nodes == ["http://a/v1", "http://b/v1"] and result.failovers == 1
    assert [r.outcome for r in spend.rows("req-1")] == ["partial", "ok"]
    assert budget.reserved == 0 and budget.spent == result.amount == spend.total()


async def test_a_whole_call_before_a_failure_is_kept(tmp_path: Path) -> None:
    """A node that finished its call and then broke (an error event after the end) is
    banned, but the client keeps the whole call it sent."""
    def handler(request: httpx.Request) -> httpx.Response:
        content = call_frames(['{"x": 1}'], call_id="call_a", finish=False)
        content += b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": ' \
                   b'"tool_calls"}]}\n\ndata: {"error": {"message": "boom"}}\n\n'
        return stream(content)

    a = node("http://a/v1")
    pieces, result, _ = await run(handler, [a, node("http://b/v1")], tmp_path,
                                  Budget(limit=1000), constrained=True)
    assert [p.node for p in pieces] == ["http://a/v1"]
    assert result.finish_reason == "tool_calls" and a.failures == 1


@pytest.mark.parametrize("calls", [
    "nope", [{"index": "0", "function": {"arguments": ""}}], [{"index": 0}],
    [{"index": 0, "function": {"arguments": 5}}], [{"index": 0, "id": 3, "function": {}}]])
async def test_malformed_call_deltas_fail_the_node(tmp_path: Path, calls: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            bad = {"choices": [{"index": 0, "delta": {"tool_calls": calls}}]}
            return stream(b"data: " + json.dumps(bad).encode() + b"\n\n")
        return stream(call_frames(['{"x": 2}'], call_id="call_b", usage=(12, 1)))

    a = node("http://a/v1")
    pieces, _, _ = await run(handler, [a, node("http://b/v1")], tmp_path, Budget(limit=1000),
                             constrained=True)
    assert [p.node for p in pieces] == ["http://b/v1"]
    assert a.failures == 1 and "wrong type" in a.events[-1]


def test_old_offers_without_capabilities_still_verify_and_are_text_only() -> None:
    account = Account.create()
    old = node("http://a/v1").offer
    assert old is not None
    wire = sign_offer(old, account).model_dump_json()
    assert "capabilities" not in wire  # what an offer from before the field looked like
    parsed = Offer.model_validate_json(wire)
    assert offer_signer(parsed) == account.address
    assert not parsed.models[0].offers({caps.TOOLS}) and parsed.models[0].offers(set())
    new = node("http://b/v1", [caps.TOOLS, caps.STRUCTURED_OUTPUT]).offer
    assert new is not None
    again = Offer.model_validate_json(sign_offer(new, account).model_dump_json())
    assert offer_signer(again) == account.address
    assert again.models[0].capabilities == [caps.TOOLS, caps.STRUCTURED_OUTPUT]
    tampered = again.model_copy(deep=True)
    tampered.models[0].capabilities = [caps.TOOLS, caps.TOOL_CHOICE_AUTO]
    with pytest.raises(ValueError, match="signed by"):
        offer_signer(tampered)


def test_requests_need_what_their_fields_ask_for() -> None:
    def needs(**fields: Any) -> tuple[set[str], bool]:
        found = needs_of(ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}))
        return set(found.capabilities), found.constrained

    assert needs() == (set(), False)
    assert needs(tools=[TOOL], tool_choice="required") == ({caps.TOOLS}, True)
    assert needs(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "f"}}) \
        == ({caps.TOOLS}, True)
    assert needs(tools=[TOOL]) == ({caps.TOOLS, caps.TOOL_CHOICE_AUTO}, True)
    assert needs(tools=[TOOL], tool_choice="none") == ({caps.TOOLS}, False)
    assert needs(response_format={"type": "json_object"}) == ({caps.STRUCTURED_OUTPUT}, True)
    assert needs(response_format={"type": "text"}) == (set(), False)


def test_ranking_keeps_only_nodes_offering_what_is_needed() -> None:
    plain, old = node("http://plain/v1", []), node("http://old/v1")
    tools = node("http://tools/v1", [caps.TOOLS, caps.STRUCTURED_OUTPUT])
    nodes = [plain, old, tools]
    assert {n.url for n, _ in rank(nodes, "m", 1, 1, Policy())} == {
        "http://plain/v1", "http://old/v1", "http://tools/v1"}
    assert [n.url for n, _ in rank(nodes, "m", 1, 1, Policy(), frozenset({caps.TOOLS}))] == [
        "http://tools/v1"]
    assert rank(nodes, "m", 1, 1, Policy(), frozenset({caps.TOOLS, caps.TOOL_CHOICE_AUTO})) \
        == []


@pytest.mark.parametrize(("offered", "fields", "param", "words"), [
    ([], {"tools": [TOOL], "tool_choice": "required"}, "tools", "tool calls"),
    ([caps.TOOLS], {"tools": [TOOL]}, "tool_choice", "'required' or a named function"),
    ([caps.TOOLS], {"response_format": {"type": "json_object"}}, "response_format", "JSON"),
])
async def test_a_need_no_node_offers_is_the_buyers_400_and_asks_no_node(
        tmp_path: Path, offered: list[str], fields: dict[str, Any], param: str,
        words: str) -> None:
    """Old offers (no capability list) are text only; a node offering tools but not
    ``auto`` does not take ``auto``; nobody offers JSON here. The gateway says so in
    OpenAI's error JSON without asking (or blaming) any node."""
    from types import SimpleNamespace

    from agoranet.api.errors import error_from_exception
    from agoranet.errors import CapabilityNotOfferedError
    from agoranet.gateway.service import GatewayService

    nodes = {n.url: n for n in (node("http://old/v1"), node("http://new/v1", offered))}
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(500)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        service = GatewayService(SimpleNamespace(nodes=nodes),  # type: ignore[arg-type]
                                 Policy(), Budget(limit=1000), SpendLog(tmp_path / "s.sqlite"),
                                 client, 16)
        with pytest.raises(CapabilityNotOfferedError) as caught:
            await service.chat({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                **fields})
    status, body, _ = error_from_exception(caught.value)
    assert status == 400 and body["error"]["code"] == "capability_not_offered"
    assert body["error"]["param"] == param and words in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    assert asked == [] and all(n.failures == 0 for n in nodes.values())
