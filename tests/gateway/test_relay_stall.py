"""Deadlines between content tokens: a node that stalls (alive, sending keep-alives and
empty events, but no tokens) is failed over like one that died; slow is not stalled."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.relay import Relay, RelayResult
from agoranet.gateway.spendlog import SpendLog
from simnodes import BODY, Stalling, event_stream, node, sse, token

pytestmark = pytest.mark.timeout(20)

# What a stalled node may still send: none of it is progress.
IDLE = [b": keep-alive\n\n", b'data: {"choices":[]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":""}}]}\n\n']


class Paced(httpx.AsyncByteStream):
    """A whole answer, one token every ``every_s`` seconds."""

    def __init__(self, words: list[str], every_s: float) -> None:
        self.words = words
        self.every_s = every_s

    async def __aiter__(self) -> Any:
        for word in self.words:
            await asyncio.sleep(self.every_s)
            yield token(word)
        yield sse([], usage=(5, len(self.words)))


async def run(bodies: dict[str, bytes | httpx.AsyncByteStream], policy: Policy, tmp_path: Path,
              read_pause_s: float = 0.0) -> tuple[str, RelayResult, list[NodeState], Budget,
                                                  SpendLog, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return event_stream(bodies[request.url.host])

    nodes = [node(f"http://{host}/v1") for host in bodies]
    budget = Budget(limit=10_000)
    spend = SpendLog(tmp_path / "spend.sqlite")
    text = ""
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        relay = Relay(client, [(n, n.offer.models[0]) for n in nodes],  # type: ignore[union-attr]
                      BODY, 40, 10, policy, spend, request_id="req-1")
        result = relay.result
        async for piece in relay.pieces(budget):
            text += piece.text
            await asyncio.sleep(read_pause_s)
    return text, result, nodes, budget, spend, seen


async def test_a_node_that_stalls_after_its_first_token_is_failed_over(tmp_path: Path) -> None:
    stalled = Stalling([token("Hello")], IDLE)
    text, result, (a, b), budget, spend, seen = await run(
        {"a": stalled, "b": sse([" friend."], usage=(12, 1))}, Policy(token_timeout_s=0.3),
        tmp_path)
    assert text == "Hello friend."  # one whole answer
    assert seen[1]["messages"][-1] == {"role": "assistant", "content": "Hello"}
    assert result.nodes == [a.url, b.url] and result.failovers == 1
    assert a.failures == 1 and a.banned() and "stalled" in a.events[-1]
    assert b.failures == 0
    assert stalled.closed.is_set()
    assert [r.outcome for r in spend.rows("req-1")] == ["partial", "ok"]
    assert budget.reserved == 0 and budget.spent == result.amount == spend.total() > 0


async def test_empty_events_do_not_stretch_the_first_token_deadline(tmp_path: Path) -> None:
    stalled = Stalling([], IDLE)
    text, result, (a, _), budget, spend, _ = await run(
        {"a": stalled, "b": sse(["ok"], usage=(3, 1))}, Policy(first_token_timeout_s=0.3),
        tmp_path)
    assert text == "ok" and result.nodes == ["http://b/v1"]
    assert a.failures == 1 and "no first token" in a.events[-1]
    assert stalled.closed.is_set()
    assert budget.reserved == 0 and budget.spent == spend.total() == result.amount


async def test_a_slow_node_that_keeps_producing_is_not_stalled(tmp_path: Path) -> None:
    words = [f" w{i}" for i in range(10)]  # 1.2 s in all, far past the deadline; 0.12 s apart
    text, result, (a, _), budget, _, _ = await run(
        {"a": Paced(words, 0.12), "b": sse(["never"])}, Policy(token_timeout_s=0.6), tmp_path)
    assert text == "".join(words) and result.failovers == 0 and a.failures == 0
    assert budget.reserved == 0


async def test_a_client_slow_to_read_does_not_make_the_node_stalled(tmp_path: Path) -> None:
    words = [" a", " b", " c", " d"]  # sent at once; the client takes 0.3 s for each
    text, result, (a, _), budget, _, _ = await run(
        {"a": sse(words, usage=(5, 4)), "b": sse(["never"])}, Policy(token_timeout_s=0.2),
        tmp_path, read_pause_s=0.3)
    assert text == "".join(words) and result.failovers == 0 and a.failures == 0
    assert budget.reserved == 0


def test_a_request_may_shorten_the_token_deadline_but_not_stretch_it() -> None:
    policy = Policy(token_timeout_s=5.0)
    assert policy.narrowed({"token_timeout_s": 1.5}).token_timeout_s == 1.5
    assert policy.narrowed({"token_timeout_s": 60}).token_timeout_s == 5.0


async def test_the_gateway_setting_overrides_the_policy_files_token_deadline(
    tmp_path: Path
) -> None:
    from agoranet.config import GatewaySettings
    from agoranet.gateway.app import build_service

    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"token_timeout_s": 9, "prefer": "cheapest"}))
    for setting, expected in ((None, 9.0), (2.5, 2.5)):
        service = build_service(GatewaySettings(
            nodes=["http://127.0.0.1:9/v1"], policy_file=policy_file, token_timeout_s=setting,
            spend_log=tmp_path / f"spend-{setting}.sqlite"))
        try:
            assert service.policy.token_timeout_s == expected
            assert service.policy.prefer == "cheapest"
        finally:
            await service.client.aclose()
            service.spend.close()
            if service.directory.reputation is not None:
                service.directory.reputation.close()


async def test_a_deadline_the_request_tightened_never_counts_against_the_node(
        tmp_path: Path) -> None:
    """A client that asks for a first token sooner than the gateway waits gets a 504 (the
    node declined for a reason not its own, so it is not recorded as a failure); the same
    slowness under the gateway's own deadline is the node's failure."""
    from agoranet.errors import AgoranetError

    policy = Policy().narrowed({"first_token_timeout_s": 0.05, "ban_base_s": 10**9})
    assert policy.own_deadlines and policy.ban_base_s == Policy().ban_base_s
    slow = Paced(["late"], every_s=0.5)
    with pytest.raises(AgoranetError, match="deadline this request set") as refused:
        await run({"a": slow}, policy, tmp_path)
    assert getattr(refused.value, "status_code", None) == 504
    # The same slowness under the gateway's own deadline is the node's fault.
    with pytest.raises(AgoranetError, match="no first token in time"):
        await run({"b": Paced(["late"], every_s=0.5)}, Policy(first_token_timeout_s=0.05),
                  tmp_path / "own")


def test_a_request_cannot_lengthen_a_deadline_or_change_bans() -> None:
    base = Policy(first_token_timeout_s=5, token_timeout_s=5, ban_base_s=5, ban_cap_s=60)
    asked = base.narrowed({"first_token_timeout_s": 600, "token_timeout_s": 600,
                           "ban_base_s": 1e9, "ban_cap_s": 1e9})
    assert (asked.first_token_timeout_s, asked.token_timeout_s) == (5, 5)
    assert (asked.ban_base_s, asked.ban_cap_s) == (5, 60) and not asked.own_deadlines
