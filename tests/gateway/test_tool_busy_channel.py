"""A seller still busy on our channel with an earlier call we stopped waiting for.

In process, over ``test_tool_buying``'s in-memory sellers: the seller answers our voucher
with a 402 ``channel_busy`` (it still holds the channel). As the node payer does, the
gateway asks again after short pauses with the same voucher; once the seller lets go the
call is paid and answered as usual. A seller that stays busy is not this call's failure:
the next seller is tried, nothing is charged, nobody is blamed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from test_tool_buying import Market, Seller, build
from x402.mechanisms.evm.batch_settlement.errors import ERR_CHANNEL_BUSY

from agoranet.gateway import tool_buying
from agoranet.payments import x402wire

__all__ = ["build"]  # the fixture, imported


class BusySeller(Seller):
    """Refuses our first ``busy`` vouchers as "channel busy", then serves as usual."""

    def __init__(self, name: str, price: Any, busy: int) -> None:
        super().__init__(name, price)
        self.busy = busy
        self.vouchers: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        if x402wire.PAYMENT_SIGNATURE in request.headers and self.busy:
            self.requests.append(request)
            self.vouchers.append(request.headers[x402wire.PAYMENT_SIGNATURE])
            self.busy -= 1
            return self._required(self.price, ERR_CHANNEL_BUSY)
        if x402wire.PAYMENT_SIGNATURE in request.headers:
            self.vouchers.append(request.headers[x402wire.PAYMENT_SIGNATURE])
        return super().handle(request)


@pytest.fixture(autouse=True)
def _short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool_buying, "BUSY_RETRIES_S", (0.001, 0.001, 0.001))


def test_a_busy_channel_is_asked_again_then_paid(build: Callable[..., Market]) -> None:
    seller = BusySeller("s", 1000, busy=2)
    m = build(seller, limit=10_000)
    answer = m.call()
    assert answer["cost"] == 1000 and answer["tried"] == []
    assert len(seller.vouchers) == 3 and len(set(seller.vouchers)) == 1  # the same voucher
    assert m.rows() == [(seller.root, "ok", 1000, "agent")]
    assert (m.budget.spent, m.budget.reserved) == (1000, 0)
    assert m.events(seller) == (1, 0, 0)


def test_a_seller_that_stays_busy_is_passed_over_unblamed(
        build: Callable[..., Market]) -> None:
    busy, other = BusySeller("busy", 1000, busy=10), Seller("other", 1000)
    m = build(busy, other, limit=10_000)
    answer = m.call()  # same price: "busy" first by URL
    assert answer["seller"] == other.root and answer["cost"] == 1000
    assert answer["tried"] == [{"seller": busy.root, "charged": 0, "error":
                                "its channel is still busy with an earlier call of ours"}]
    assert len(busy.vouchers) == 4  # the first and three more after the pauses
    assert m.rows() == [(other.root, "ok", 1000, "agent")]
    assert (m.budget.spent, m.budget.reserved) == (1000, 0)
    assert m.events(busy) == (0, 0, 0)  # not its failure
