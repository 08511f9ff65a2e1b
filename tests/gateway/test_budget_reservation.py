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
