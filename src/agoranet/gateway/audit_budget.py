"""The audit budget: background audits may spend at most a share of what requests spend.

Before an audit starts, its worst case (each challenge's prompt, with room for
the chat template, plus ``max_tokens``, at the node's listed prices) must fit:

    audits spent + audits reserved + worst case <= floor + share x requests spent

where *requests spent* is everything the spend log holds that is not an audit,
and ``floor`` (default 0) is what the owner lets audits spend regardless, so
that a new gateway can check its first nodes before it has spent much.
An audit that does not fit is skipped, not started; one that costs nothing (a
free node) always fits. The reservation is also taken from the owner's total
:class:`~agoranet.gateway.budget.Budget`, so audits never overdraw it either.
Integers in base units; the share is a fraction, never a float times money.
"""

from __future__ import annotations

from fractions import Fraction

from agoranet.gateway.budget import Budget, BudgetExceededError
from agoranet.gateway.ranking import expected_cost
from agoranet.registry.offer import ModelOffer

__all__ = ["TEMPLATE_TOKENS", "AuditBudget", "audit_cost", "listed_cost"]

TEMPLATE_TOKENS = 128  # room for a chat template's tokens around each challenge prompt


def audit_cost(model: ModelOffer, prompts: list[list[str]], max_tokens: int) -> int:
    """Worst-case price in base units of asking ``prompts`` (each a challenge's message
    texts), each answered with up to ``max_tokens``, with commitments if the node offers
    them (the auditor then asks for them, at their price on every token).

    A token is at least one byte, so a message's bytes bound its tokens from above;
    each message gets 8 more and each prompt :data:`TEMPLATE_TOKENS` for the template."""
    total = 0
    for texts in prompts:
        tokens_in = sum(len(t.encode()) + 8 for t in texts) + TEMPLATE_TOKENS
        total += listed_cost(model, tokens_in, max_tokens)
    return total


def listed_cost(model: ModelOffer, prompt_tokens: int, completion_tokens: int) -> int:
    """One audit challenge's price at ``model``'s listed prices, commitments included when
    offered; base units, rounded up."""
    return expected_cost(model, prompt_tokens, completion_tokens,
                         commitments=model.commitments.offered)


class AuditBudget:
    """What audits may spend, against the owner's budget (whose ``spent`` counts both)."""

    def __init__(self, share: float, budget: Budget, audit_spent: int = 0,
                 floor: int = 0) -> None:
        self.share = Fraction(share).limit_denominator(1_000_000)
        self.floor = floor
        self.budget = budget
        self.spent = audit_spent
        self.reserved = 0

    def allowance(self) -> int:
        """What audits may spend in all so far: the floor and the share of the requests'
        spend."""
        requests = max(0, self.budget.spent - self.spent)
        return self.floor + requests * self.share.numerator // self.share.denominator

    def allows(self, cost: int) -> bool:
        return cost == 0 or self.spent + self.reserved + cost <= self.allowance()

    async def reserve(self, cost: int) -> bool:
        """Reserve ``cost`` for one audit; False (nothing reserved) if it does not fit."""
        if not self.allows(cost):
            return False
        self.reserved += cost  # taken before any await: concurrent audits cannot overcommit
        try:
            await self.budget.reserve(cost)
        except BudgetExceededError:
            self.reserved -= cost
            return False
        return True

    async def settle(self, reserved: int, actual: int) -> None:
        """Replace a reservation (0 for an audit run on demand) by what the audit cost."""
        self.reserved -= reserved
        self.spent += actual
        await self.budget.settle(reserved, actual)
