"""The relay's paid accounting against simulated paid nodes: a paid node is owed what its
signed receipt says, nothing without one, and an answer without a receipt is the node's
failure (the client keeps the answer; the node is banned)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.relay import Relay, RelayResult
from agoranet.gateway.spendlog import SpendLog
from agoranet.payments.receipts import Receipt
from fake_payers import FakePaid
from simnodes import BODY, event_stream, node, sse

pytestmark = pytest.mark.timeout(20)


class Payers:
    """Stand in for the payer: hand the relay the node's receipt, if the node sent one."""

    def __init__(self, receipts: dict[str, Receipt | None]) -> None:
        self.receipts = receipts

    async def paid(self, n: NodeState, max_amount: int) -> httpx.Auth | None:
        host = n.url.split("/")[2]
        return FakePaid(max_amount, self.receipts[host]) if host in self.receipts else None


def receipt(amount: int) -> Receipt:
    return Receipt("req-1", "0x" + "ab" * 32, 12, 3, amount, amount, 31337, "0xnode", "0xsig")


async def run(bodies: dict[str, bytes], payers: Payers, tmp_path: Path,
              budget: Budget) -> tuple[str, RelayResult, list[NodeState], SpendLog]:
    nodes = [node(f"http://{host}/v1") for host in bodies]
    spend = SpendLog(tmp_path / "spend.sqlite")

    def handler(request: httpx.Request) -> httpx.Response:
        return event_stream(bodies[request.url.host])

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        relay = Relay(client, [(n, n.offer.models[0]) for n in nodes],  # type: ignore[union-attr]
                      BODY, 40, 10, Policy(), spend, payers,  # type: ignore[arg-type]
                      request_id="req-1")
        result = relay.result
        text = "".join([p.text async for p in relay.pieces(budget)])
    return text, result, nodes, spend


async def test_a_paid_answer_without_a_receipt_costs_nothing_and_fails_the_node(
    tmp_path: Path
) -> None:
    budget = Budget(limit=10_000)
    text, result, (a, b), spend = await run(
        {"a": sse(["Hello", " there"], usage=(12, 2)), "b": sse(["never"])},
        Payers({"a": None}), tmp_path, budget)
    assert text == "Hello there"  # the client keeps its whole answer
    # Nothing is owed without a receipt: not the price list's 14 units either.
    assert result.amount == 0 and budget.spent == 0 and budget.reserved == 0
    [row] = spend.rows("req-1")
    assert (row.node, row.amount, row.receipt, row.outcome) == (a.url, 0, None, "partial")
    # ... and it counts against the node.
    assert a.failures == 1 and a.successes == 0 and a.banned()
    assert "without a receipt" in a.events[-1]
    assert b.failures == 0 and result.nodes == [a.url]


async def test_a_paid_answer_costs_what_its_receipt_says(tmp_path: Path) -> None:
    budget = Budget(limit=10_000)
    text, result, (a,), spend = await run(
        {"a": sse(["Hello", " there"], usage=(12, 2))}, Payers({"a": receipt(9)}), tmp_path,
        budget)
    assert text == "Hello there"
    assert result.amount == budget.spent == spend.total() == 9 and budget.reserved == 0
    [row] = spend.rows("req-1")
    assert row.outcome == "ok" and json.loads(row.receipt or "{}")["amount"] == "9"
    assert a.failures == 0 and a.successes == 1


async def test_a_free_node_costs_its_price_list(tmp_path: Path) -> None:
    """The other side of the rule: without a channel, the listed price is the charge."""
    budget = Budget(limit=10_000)
    _, result, (a,), spend = await run(
        {"a": sse(["Hello", " there"], usage=(12, 2))}, Payers({}), tmp_path, budget)
    assert result.amount == budget.spent == spend.total() == 14  # 12 + 2 tokens at 1 each
    assert a.failures == 0
