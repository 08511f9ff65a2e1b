"""A budget reservation has one owner and is released once, without an await."""

from __future__ import annotations

import pytest

from agoranet.gateway.budget import Budget, BudgetExceededError


async def test_a_reservation_is_released_once() -> None:
    budget = Budget(limit=100)
    hold = await budget.reserve(60)
    with pytest.raises(BudgetExceededError):
        await budget.reserve(41)
    hold.release(25)
    hold.release(25)  # a second release changes nothing
    assert (budget.reserved, budget.spent, hold.released) == (0, 25, True)
    await budget.reserve(75)  # the rest of the budget is free again
    assert budget.reserved == 75


async def test_a_refusal_tells_the_owner_what_is_left_of_the_budget() -> None:
    """The 402 says what the request may cost and what is left: the limit less what was
    spent and what requests in flight hold."""
    budget = Budget(limit=100, spent=30)
    await budget.reserve(20)  # a request in flight
    with pytest.raises(BudgetExceededError) as refused:
        await budget.reserve(60)
    assert str(refused.value) == ("this request may cost up to 60 base units; the budget "
                                  "has 50 left of 100")
    assert (refused.value.status_code, refused.value.code) == (402, "budget_exceeded")
    assert (budget.reserved, budget.spent) == (20, 30)  # the refused request holds nothing
