"""The owner's total budget: each request reserves its worst case before it is sent.

Reservations are taken under a lock, so concurrent requests can never together
commit more than the budget; after the answer, the reservation is replaced by
the actual amount. Integers in base units.
"""

from __future__ import annotations

import asyncio

from agoranet.errors import RequestError

__all__ = ["Budget", "BudgetExceededError"]


class BudgetExceededError(RequestError):
    status_code = 402
    error_type = "insufficient_quota"
    code = "budget_exceeded"


class Budget:
    def __init__(self, limit: int | None, spent: int = 0) -> None:
        self.limit = limit
        self.spent = spent
        self.reserved = 0
        self._lock = asyncio.Lock()

    async def reserve(self, amount: int) -> None:
        async with self._lock:
            if self.limit is not None and self.spent + self.reserved + amount > self.limit:
                left = self.limit - self.spent - self.reserved
                raise BudgetExceededError(
                    f"this request may cost up to {amount} base units; the budget has {left} "
                    f"left of {self.limit}"
                )
            self.reserved += amount

    async def settle(self, reserved: int, actual: int) -> None:
        async with self._lock:
            self.reserved -= reserved
            self.spent += actual
