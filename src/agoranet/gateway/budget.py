"""The owner's total budget: each request reserves its worst case before it is sent.

Reservations are taken under a lock, so concurrent requests can never together
commit more than the budget; after the answer, the reservation is replaced by
the actual amount. A :class:`Reservation` is released at most once, and without
an await: a cancelled request (a client hanging up) cannot interrupt it. Integers
in base units.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from agoranet.errors import RequestError

__all__ = ["Budget", "BudgetExceededError", "Reservation", "Reserver"]


class BudgetExceededError(RequestError):
    status_code = 402
    error_type = "insufficient_quota"
    code = "budget_exceeded"


class Reserver(Protocol):
    """What a request reserves its attempts against: the :class:`Budget`, or a gateway
    key's chain and then the budget (``agoranet.gateway.keyaccess.KeyedBudget``)."""

    async def reserve(self, amount: int) -> Reservation: ...


class Budget:
    def __init__(self, limit: int | None, spent: int = 0) -> None:
        self.limit = limit
        self.spent = spent
        self.reserved = 0
        self._lock = asyncio.Lock()

    async def reserve(self, amount: int) -> Reservation:
        async with self._lock:
            if self.limit is not None and self.spent + self.reserved + amount > self.limit:
                left = self.limit - self.spent - self.reserved
                raise BudgetExceededError(
                    f"this request may cost up to {amount} base units; the budget has {left} "
                    f"left of {self.limit}"
                )
            self.reserved += amount
            return Reservation(self, amount)

    async def settle(self, reserved: int, actual: int) -> None:
        self.release(reserved, actual)

    def release(self, reserved: int, actual: int) -> None:
        """Replace ``reserved`` by ``actual``; synchronous, so nothing can interrupt it."""
        self.reserved -= reserved
        self.spent += actual


class Reservation:
    """One hold on the budget, with one owner that releases it exactly once."""

    def __init__(self, budget: Budget, amount: int) -> None:
        self.budget = budget
        self.amount = amount
        self.released = False

    def release(self, actual: int) -> None:
        """Replace the hold by what was spent; later calls change nothing."""
        if self.released:
            return
        self.released = True
        self.budget.release(self.amount, actual)
