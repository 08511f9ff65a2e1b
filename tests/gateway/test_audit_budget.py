"""The audit budget: audits may spend a share of what requests spend, never more."""

from __future__ import annotations

from agoranet.gateway.audit_budget import TEMPLATE_TOKENS, AuditBudget, audit_cost
from agoranet.gateway.auditing import Auditor
from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.registry.offer import CommitmentTerms, ModelOffer, Offer, Price


def offer(price_in: int, price_out: int) -> ModelOffer:
    return ModelOffer(id="m", context_length=512, price=Price(input_per_million=price_in,
                                                              output_per_million=price_out))


def test_an_audits_worst_case_is_every_challenge_at_full_length() -> None:
    prompts = [["Hello!"], ["You are kind.", "Where is the cat?"]]
    model = offer(1_000_000, 2_000_000)  # 1 and 2 base units a token
    first = (6 + 8 + TEMPLATE_TOKENS) + 2 * 48
    second = (13 + 8 + 17 + 8 + TEMPLATE_TOKENS) + 2 * 48
    assert audit_cost(model, prompts, 48) == first + second
    assert audit_cost(offer(0, 0), prompts, 48) == 0
    # A node offering commitments is asked for them: their price on every token, too.
    committed = model.model_copy(update={"commitments": CommitmentTerms(
        offered=True, algorithm="x", price_per_million=3_000_000)})
    tokens = (6 + 8 + TEMPLATE_TOKENS) + (13 + 8 + 17 + 8 + TEMPLATE_TOKENS) + 2 * 48
    assert audit_cost(committed, prompts, 48) == first + second + 3 * tokens


async def test_audits_fit_within_their_share_of_request_spend() -> None:
    owner = Budget(limit=None, spent=100_000)  # what requests have cost so far
    limit = AuditBudget(0.02, owner)
    assert limit.allowance() == 2_000
    assert limit.allows(2_000) and not limit.allows(2_001)
    assert await limit.reserve(1_500)
    assert not limit.allows(600) and not await limit.reserve(600)
    assert owner.reserved == 1_500
    await limit.settle(1_500, 1_200)  # the audit cost less than its worst case
    assert (limit.spent, limit.reserved, owner.spent, owner.reserved) == (1_200, 0, 101_200, 0)
    assert limit.allowance() == 2_000  # audit spend does not raise the allowance
    assert limit.allows(800) and not limit.allows(801)
    assert limit.allows(0)  # a free node's audit costs nothing
    await owner.settle(0, 50_000)  # more requests, more room
    assert limit.allowance() == 3_000


async def test_a_floor_lets_a_new_gateway_audit_before_it_has_spent_much() -> None:
    limit = AuditBudget(0.02, Budget(limit=None, spent=0), floor=500)
    assert limit.allowance() == 500
    assert await limit.reserve(400) and not limit.allows(101)
    await limit.settle(400, 400)
    assert limit.allows(100) and not limit.allows(101)


async def test_an_audit_never_overdraws_the_owners_budget() -> None:
    owner = Budget(limit=100_500, spent=100_000)
    limit = AuditBudget(0.02, owner)
    assert limit.allows(1_000)  # within the share, but only 500 left of the budget
    assert not await limit.reserve(1_000)
    assert (limit.reserved, owner.reserved) == (0, 0)


async def test_an_audit_over_budget_is_skipped_not_started() -> None:
    node = NodeState("http://paid/v1", offer=Offer(engine="fake", models=[offer(100, 1_000_000)]))
    owner = Budget(limit=None, spent=1_000)  # 2% of it is 20: less than one challenge
    auditor = Auditor(None, "m", share=1.0, seed=1, limit=AuditBudget(0.02, owner))
    _, prompts = auditor.draw()
    assert auditor.cost(node, prompts) > 20
    auditor.after_request(node, "m")
    assert auditor.skipped == 1 and not auditor._tasks and not auditor._running
    assert auditor.status()["allowance"] == 20
    await owner.settle(0, 10_000_000)  # enough request spend now
    auditor.after_request(node, "m")
    assert auditor.skipped == 1 and node.url in auditor._running
    await auditor.stop()


def test_the_audit_drawn_is_the_audit_asked() -> None:
    """The cost is computed from the very challenges the audit will send."""
    import random

    from agoranet.verify.node_audit import PER_ROUND, challenges

    auditor = Auditor(None, "m", seed=7, rounds=2)
    seed, prompts = auditor.draw()
    sent = challenges(2 * PER_ROUND, "m", auditor.max_tokens, random.Random(seed))
    assert prompts == [[m.content for m in r.messages or ()] for r in sent]
    assert len(prompts) == 2 * PER_ROUND
