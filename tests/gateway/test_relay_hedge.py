"""Hedged requests against simulated nodes: a first node with no token by ``hedge_after_ms``
is raced against the next; the first to answer wins, the other is let go without blame.

A racer that fails is the only one blamed (and banned); one that declines for a reason not
its own (not served, cannot be paid) is not; a request every node would refuse ends the
race at once; a node that has streamed part of the answer is never hedged. Every case ends
with the reservations released, the losers' streams closed, and only what was produced
charged.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.errors import CannotPayError, RequestError, UpstreamError
from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.relay import Relay, RelayResult
from agoranet.gateway.spendlog import SpendLog
from agoranet.payments.pay.httpx_auth import Payment
from simnodes import BODY, Delayed, Stalling, event_stream, node, sse

pytestmark = pytest.mark.timeout(20)

HEDGED = Policy(hedge_after_ms=10)
Reply = bytes | httpx.AsyncByteStream | httpx.Response


class Race:
    def __init__(self, tmp_path: Path, replies: dict[str, Reply]) -> None:
        self.replies = replies
        self.nodes = [node(f"http://{host}/v1") for host in replies]
        self.budget = Budget(limit=10_000)
        self.spend = SpendLog(tmp_path / "spend.sqlite")
        self.result = RelayResult("req-1")
        self.asked: list[str] = []

    async def run(self, policy: Policy = HEDGED, payers: Any = None) -> str:
        def handler(request: httpx.Request) -> httpx.Response:
            self.asked.append(request.url.host)
            reply = self.replies[request.url.host]
            return reply if isinstance(reply, httpx.Response) else event_stream(reply)

        candidates = [(n, n.offer.models[0]) for n in self.nodes]  # type: ignore[union-attr]
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        relay = Relay(client, candidates, BODY, 40, 10, policy, self.spend, payers,
                      request_id="req-1")
        self.result = relay.result
        try:
            async with client:
                return "".join([p.text async for p in relay.pieces(self.budget)])
        finally:
            assert self.budget.reserved == 0
            assert self.budget.spent == self.spend.total() == self.result.amount
            assert all(s.closed.is_set() for s in self.replies.values()
                       if isinstance(s, Stalling))

    def failed(self) -> list[str]:
        return [n.url.split("/")[2] for n in self.nodes if n.failures]


def late(words: list[str], delay_s: float = 0.2) -> Delayed:
    return Delayed(sse(words, usage=(5, len(words))), delay_s)


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message}})


async def test_the_faster_rival_wins_and_the_slow_node_is_let_go_unblamed(
        tmp_path: Path) -> None:
    race = Race(tmp_path, {"a": Stalling([]), "b": sse(["fast"], usage=(5, 1))})
    assert await race.run() == "fast"
    assert race.asked == ["a", "b"] and race.failed() == []
    assert race.result.nodes == ["http://b/v1"] and race.result.failovers == 0
    assert race.nodes[1].successes == 1 and race.nodes[0].successes == 0
    assert [(r.node, r.amount) for r in race.spend.rows()] == [("http://b/v1", 6)]


async def test_a_first_node_that_answers_in_time_is_not_hedged(tmp_path: Path) -> None:
    race = Race(tmp_path, {"a": sse(["quick"], usage=(5, 1)), "b": sse(["never"])})
    assert await race.run(Policy(hedge_after_ms=2_000)) == "quick"
    assert race.asked == ["a"]


async def test_a_rival_that_fails_is_blamed_and_the_first_node_still_wins(
        tmp_path: Path) -> None:
    race = Race(tmp_path, {"a": late(["late"]), "b": error(500, "boom")})
    assert await race.run() == "late"
    assert race.asked == ["a", "b"] and race.failed() == ["b"]
    assert race.nodes[1].banned() and not race.nodes[0].banned()
    assert race.result.nodes == ["http://a/v1"]


async def test_when_both_racers_fail_the_client_hears_of_both(tmp_path: Path) -> None:
    broken = Delayed(b'data: {"error": {"message": "oom"}}\n\n', 0.2)
    race = Race(tmp_path, {"a": broken, "b": error(500, "boom")})
    with pytest.raises(UpstreamError) as caught:
        await race.run()
    assert caught.value.status_code == 503
    assert str(caught.value) == ("no node could answer: http://b/v1: HTTP 500: boom; "
                                 "http://a/v1: error mid-stream: oom")
    assert race.failed() == ["a", "b"]


async def test_a_request_the_rival_refuses_ends_the_race_unblamed(tmp_path: Path) -> None:
    race = Race(tmp_path, {"a": Stalling([]), "b": error(422, "bad schema")})
    with pytest.raises(RequestError, match="bad schema") as caught:
        await race.run()
    assert caught.value.status_code == 422 and race.failed() == []


async def test_a_rival_that_does_not_serve_the_model_is_not_blamed(tmp_path: Path) -> None:
    race = Race(tmp_path, {"a": late(["late"]), "b": error(404, "no such model")})
    assert await race.run() == "late" and race.failed() == []


class CannotPay(httpx.Auth):
    def __init__(self) -> None:
        self.payment = Payment()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise CannotPayError("the channel cannot be topped up")
        yield request  # pragma: no cover - makes this a generator


class Payers:
    async def paid(self, n: NodeState, max_amount: int) -> httpx.Auth | None:
        return CannotPay() if n.url == "http://b/v1" else None


async def test_a_rival_the_gateway_cannot_pay_is_not_blamed(tmp_path: Path) -> None:
    race = Race(tmp_path, {"a": late(["late"]), "b": sse(["never"])})
    assert await race.run(payers=Payers()) == "late"
    assert race.failed() == [] and race.result.nodes == ["http://a/v1"]


async def test_a_node_the_gateway_cannot_pay_mid_request_is_skipped_unblamed(
        tmp_path: Path) -> None:
    """Not hedged: the payer fails on the request (a top-up that cannot be made)."""
    race = Race(tmp_path, {"b": sse(["never"]), "c": sse(["ok"], usage=(5, 1))})
    race.nodes[0].url = "http://b/v1"
    assert await race.run(Policy(), payers=Payers()) == "ok"
    assert race.failed() == [] and race.result.nodes == ["http://c/v1"]


async def test_a_node_that_streamed_part_of_the_answer_is_not_hedged(tmp_path: Path) -> None:
    race = Race(tmp_path, {"a": sse(["Hello"], finish=False), "b": late([" there"]),
                           "c": sse([" never"])})
    assert await race.run() == "Hello there"
    assert race.asked == ["a", "b"] and race.failed() == ["a"]


async def test_without_budget_for_a_rival_the_next_node_keeps_its_turn(tmp_path: Path) -> None:
    """The budget holds one request's worst case (58 units), not two: no rival is raced;
    when the first node fails, the next in rank order (not the one after) takes over."""
    broken = Delayed(b'data: {"error": {"message": "oom"}}\n\n', 0.2)
    race = Race(tmp_path, {"a": broken, "b": sse(["from b"], usage=(5, 1)),
                           "c": sse(["from c"], usage=(5, 1))})
    race.budget = Budget(limit=100)
    assert await race.run() == "from b"
    assert race.asked == ["a", "b"] and race.failed() == ["a"]
    assert race.result.nodes == ["http://b/v1"]
