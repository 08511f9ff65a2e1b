"""A client hanging up at any point of a relayed request releases its budget reservation
exactly once, hedged or not, and closes every node stream it opened.

The client goes away in three ways: its task is cancelled through an anyio cancel scope (what
the SSE response does on a disconnect: every later await in the scope is cancelled again),
its task is cancelled once with ``Task.cancel()``, or it stops reading and closes the stream
of pieces while the relay waits at a ``yield``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.relay import Piece, Relay, RelayResult
from agoranet.gateway.spendlog import SpendLog
from simnodes import BODY, Delayed, Stalling, event_stream, node, sse, token

pytestmark = pytest.mark.timeout(20)


@dataclass
class Scenario:
    """Nodes ``a`` and ``b``; the client hangs up once ``ready`` says so."""

    bodies: dict[str, bytes | Stalling]
    ready: Callable[[list[str], list[Piece]], bool]  # (hosts asked, pieces read)
    policy: Policy = field(default_factory=Policy)
    at_yield: bool = False  # the relay waits at a yield (so the client may close it)
    spent: bool = False  # the client got tokens: they are charged


def _scenarios() -> dict[str, Callable[[], Scenario]]:
    hedged = Policy(hedge_after_ms=10)
    return {
        "before-first-token": lambda: Scenario(
            {"a": Stalling([])}, lambda asked, _: asked == ["a"]),
        "during-hedge-race": lambda: Scenario(
            {"a": Stalling([]), "b": Stalling([])}, lambda asked, _: asked == ["a", "b"],
            hedged),
        "mid-stream": lambda: Scenario(
            {"a": Stalling([token("Hello"), token(" there")])},
            lambda _, pieces: len(pieces) == 2, at_yield=True, spent=True),
        "mid-stream-after-a-hedge": lambda: Scenario(
            {"a": Stalling([]), "b": Stalling([token("Hello"), token(" there")])},
            lambda _, pieces: len(pieces) == 2, hedged, at_yield=True, spent=True),
        "during-failover": lambda: Scenario(
            {"a": sse(["Hello", " there"], finish=False), "b": Stalling([])},
            lambda asked, _: asked == ["a", "b"], spent=True),
        "after-the-answer": lambda: Scenario(
            {"a": sse(["Hello", " there", "."], usage=(5, 3))},
            lambda _, pieces: len(pieces) == 3, at_yield=True, spent=True),
    }


# Closing the stream of pieces reaches the relay only while it waits at a yield.
CASES = [(name, hang_up) for name, make in _scenarios().items()
         for hang_up in ("cancel-scope", "task-cancel", "close-at-yield")
         if hang_up != "close-at-yield" or make().at_yield]


@pytest.mark.parametrize(("name", "hang_up"), CASES)
async def test_a_client_hanging_up_releases_the_reservation(name: str, hang_up: str,
                                                            tmp_path: Path) -> None:
    scenario = _scenarios()[name]()
    asked: list[str] = []
    pieces: list[Piece] = []
    reached = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        if scenario.ready(asked, pieces):
            reached.set()
        return event_stream(scenario.bodies[request.url.host])

    nodes = [node(f"http://{host}/v1") for host in scenario.bodies]
    budget = Budget(limit=10_000)
    spend = SpendLog(tmp_path / "spend.sqlite")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        relay = Relay(client, [(n, n.offer.models[0]) for n in nodes],  # type: ignore[union-attr]
                      BODY, 40, 10, scenario.policy, spend, request_id="req-1")
        result = relay.result
        stream = relay.pieces(budget)

        async def read() -> None:
            try:
                async for piece in stream:
                    pieces.append(piece)
                    if scenario.ready(asked, pieces):
                        reached.set()
                        if hang_up == "close-at-yield":
                            break
            finally:
                await stream.aclose()  # as the gateway's SSE frames do, in the cancelled scope

        if hang_up == "cancel-scope":
            async with anyio.create_task_group() as group:
                group.start_soon(read)
                await reached.wait()
                await asyncio.sleep(0.05)  # let the relay settle into its wait
                group.cancel_scope.cancel()
        else:
            task = asyncio.ensure_future(read())
            await reached.wait()
            await asyncio.sleep(0.05)
            if hang_up == "task-cancel":
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    _assert_released(budget, spend, result, nodes, scenario)
    assert all(b.closed.is_set() for b in scenario.bodies.values() if isinstance(b, Stalling))
    assert not leftover, leftover


def _assert_released(budget: Budget, spend: SpendLog, result: RelayResult,
                     nodes: list[NodeState], scenario: Scenario) -> None:
    assert budget.reserved == 0
    assert budget.spent == spend.total() == result.amount
    assert (budget.spent > 0) == scenario.spent
    # Only a node that broke off mid-answer failed; a client going away is no node's fault.
    broke = {"a"} if isinstance(scenario.bodies.get("a"), bytes) and "b" in scenario.bodies \
        else set()
    assert {n.url.split("/")[2] for n in nodes if n.failures} == broke


async def test_a_hedge_the_budget_cannot_cover_waits_for_the_first_node(tmp_path: Path) -> None:
    """The budget holds one node's worst case (58 units), not two: no rival is sent, the
    first node's answer is waited for, and its stream is not closed while it is read."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        return event_stream(Delayed(sse(["late", " answer"], usage=(5, 2)), 0.2))

    nodes = [node("http://a/v1"), node("http://b/v1")]
    budget = Budget(limit=100)
    spend = SpendLog(tmp_path / "spend.sqlite")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        relay = Relay(client, [(n, n.offer.models[0]) for n in nodes],  # type: ignore[union-attr]
                      BODY, 40, 10, Policy(hedge_after_ms=10), spend, request_id="req-1")
        result = relay.result
        text = "".join([p.text async for p in relay.pieces(budget)])
    assert text == "late answer" and asked == ["a"]
    assert budget.reserved == 0 and budget.spent == spend.total() == result.amount == 7
