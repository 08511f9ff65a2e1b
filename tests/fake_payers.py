"""Stand-ins for the gateway's node payers in relay tests: per request an ``httpx.Auth``
whose typed :class:`~agoranet.payments.pay.httpx_auth.Payment` gets what a real payer would
put there (a receipt; for a cut stream, what was counted beyond it)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import httpx

from agoranet.payments.pay.httpx_auth import Payment
from agoranet.payments.receipts import Receipt

__all__ = ["FakePaid", "Paying"]


class FakePaid(httpx.Auth):
    """One request "paid": once the answer's headers are in, ``receipt`` and
    ``unreceipted`` are what its :class:`Payment` says came of it."""

    def __init__(self, max_amount: int | None = None, receipt: Receipt | None = None,
                 unreceipted: int = 0) -> None:
        self.payment = Payment(max_amount)
        self.receipt, self.unreceipted = receipt, unreceipted

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        yield request
        self.payment.unreceipted = self.unreceipted
        self.payment.receipt = self.receipt


class Paying:
    """Notes each paid request's maximum; answers each with ``receipt_for(host)``."""

    def __init__(self, amounts: dict[str, int] | None = None, default: int = 4) -> None:
        self.maxima: list[int] = []
        self.amounts, self.default = amounts or {}, default

    async def paid(self, node: object, max_amount: int) -> FakePaid:
        self.maxima.append(max_amount)
        host = str(getattr(node, "url", "")).split("/")[2]
        amount = self.amounts.get(host, self.default)
        return FakePaid(max_amount, Receipt("req-1", "0x" + "ab" * 32, 3, 1, amount, amount,
                                            31337, "0xnode", "0xsig"))
