"""Gateway pieces without processes: policy, ranking, budget, spend log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agoranet.errors import InvalidRequestError
from agoranet.gateway.budget import Budget, BudgetExceededError
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.ranking import cost_micro, expected_cost, rank
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.registry.offer import ModelOffer, Offer, Price


def node(url: str, price_in: int, price_out: int, ttft: float | None = None) -> NodeState:
    offer = Offer(engine="fake", models=[ModelOffer(
        id="m", context_length=512, price=Price(input_per_million=price_in,
                                                output_per_million=price_out))])
    return NodeState(url, offer=offer, ttft_ms=ttft)


def test_costs_are_exact_integers() -> None:
    model = node("a", 100, 300).offer.models[0]  # type: ignore[union-attr]
    assert cost_micro(model, 10, 20) == 10 * 100 + 20 * 300
    assert expected_cost(model, 10, 20) == 1  # rounded up, never down
    assert expected_cost(model, 0, 0) == 0
    assert expected_cost(model, 10_000, 0) == 1
    assert expected_cost(model, 10_001, 0) == 2


def test_cheapest_and_fastest_preferences() -> None:
    cheap_slow, dear_fast = node("cheap", 10, 10, ttft=900), node("dear", 1000, 1000, ttft=5)
    nodes = [dear_fast, cheap_slow]
    assert [n.url for n, _ in rank(nodes, "m", 10, 10, Policy(prefer="cheapest"))] == [
        "cheap", "dear"]
    assert [n.url for n, _ in rank(nodes, "m", 10, 10, Policy(prefer="fastest"))] == [
        "dear", "cheap"]


def test_caps_bans_and_lists_filter_nodes() -> None:
    a, b, c = node("a", 10, 10), node("b", 10, 500), node("c", 10, 10)
    c.record_failure("boom", base_s=60, cap_s=600)
    ranked = rank([a, b, c], "m", 1, 1, Policy(max_price_out=100))
    assert [n.url for n, _ in ranked] == ["a"]
    assert rank([a, b], "m", 1, 1, Policy(deny=["a"], max_price_out=1000))[0][0].url == "b"
    assert rank([a, b], "other", 1, 1, Policy()) == []


def test_bans_grow_and_are_capped() -> None:
    n = node("a", 1, 1)
    assert [n.record_failure("x", 5, 30) for _ in range(5)] == [5, 10, 20, 30, 30]
    n.record_success(10, 5, 0.1)
    assert n.ban_level == 0


def test_request_policy_only_narrows() -> None:
    owner = Policy(max_price_out=100, deny=["x"], allow=["a", "b"])
    narrowed = owner.narrowed({"max_price_out": 1000, "deny": ["y"], "allow": ["b", "c"]})
    assert narrowed.max_price_out == 100
    assert narrowed.deny == ["x", "y"] and narrowed.allow == ["b"]
    with pytest.raises(InvalidRequestError, match="agoranet"):
        owner.narrowed({"prefer": "random"})


async def test_budget_reservations_never_overcommit() -> None:
    budget = Budget(limit=10)
    outcomes = await asyncio.gather(*(_try(budget, 3) for _ in range(20)), return_exceptions=True)
    granted = [o for o in outcomes if o is True]
    assert len(granted) == 3  # 3 x 3 <= 10 < 4 x 3
    assert all(isinstance(o, BudgetExceededError) for o in outcomes if o is not True)
    await asyncio.gather(*(budget.settle(3, 2) for _ in granted))
    assert (budget.spent, budget.reserved) == (6, 0)
    await budget.reserve(4)
    with pytest.raises(BudgetExceededError):
        await budget.reserve(1)


async def _try(budget: Budget, amount: int) -> bool:
    await budget.reserve(amount)
    await asyncio.sleep(0)
    return True


def test_spend_log_totals(tmp_path: Path) -> None:
    log = SpendLog(tmp_path / "spend.sqlite")
    log.add(SpendRow("r1", "m", "a", 10, 5, 3, 12.0, 50.0, "partial"))
    log.add(SpendRow("r1", "m", "b", 14, 7, 4, 9.0, 40.0, "ok"))
    log.add(SpendRow("r2", "m", "b", 10, 5, 2, 9.0, 40.0, "ok", receipt='{"amount": "2"}'))
    assert log.total() == 9
    assert log.totals("model") == [("m", 2, 51, 9, 2)]  # 2 of the 9 backed by a receipt
    assert {k: a for k, _, _, a, _ in log.totals("node")} == {"a": 3, "b": 6}
    assert [r.node for r in log.rows("r1")] == ["a", "b"]
    log.close()
    assert SpendLog(tmp_path / "spend.sqlite").total() == 9  # survives a restart


def test_adapter_surcharge_counts_only_for_adapter_requests() -> None:
    """A node's adapter surcharge must not make its base model look dearer than it is."""
    from agoranet.registry.offer import AdapterTerms

    plain, tuned = node("plain", 100, 100), node("tuned", 90, 90)
    tuned.offer.models[0].adapters = AdapterTerms(  # type: ignore[union-attr]
        accepted=True, surcharge=Price(input_per_million=50, output_per_million=50))
    model = tuned.offer.models[0]  # type: ignore[union-attr]
    assert cost_micro(model, 10, 10) == 1_800
    assert cost_micro(model, 10, 10, adapter=True) == 2_800
    cheapest = Policy(prefer="cheapest")
    assert [n.url for n, _ in rank([plain, tuned], "m", 10, 10, cheapest)] == ["tuned", "plain"]
    # only ``tuned`` takes adapters; for one, it charges its surcharge
    assert [n.url for n, _ in rank([plain, tuned], "m@adapter:" + "ab" * 32, 10, 10,
                                   cheapest)] == ["tuned"]


def test_commitments_policy_uses_only_nodes_that_offer_them_at_their_price() -> None:
    from agoranet.registry.offer import CommitmentTerms

    plain, proving = node("plain", 10, 10), node("proving", 20, 20)
    proving.offer.models[0].commitments = CommitmentTerms(  # type: ignore[union-attr]
        offered=True, algorithm="agoranet-toploc-v1", chunk=32, k=128, price_per_million=5)
    model = proving.offer.models[0]  # type: ignore[union-attr]
    assert cost_micro(model, 10, 10, commitments=True) == 10 * 25 + 10 * 25
    assert [n.url for n, _ in rank([plain, proving], "m", 10, 10, Policy())] == [
        "plain", "proving"]
    asked = Policy().narrowed({"commitments": True})
    assert [n.url for n, _ in rank([plain, proving], "m", 10, 10, asked)] == ["proving"]
    assert asked.narrowed({"commitments": False}).commitments  # a request cannot relax it
