"""A node's receipt signer that lies (with its own valid signature), for the payer's tests."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

from agoranet.market import TokenPrices, cost
from agoranet.payments.receipts import Receipt, ReceiptSigner

from .paid_support import PRICE_IN, PRICE_OUT

__all__ = ["PRICES", "Lie", "LyingSigner", "priced"]

PRICES = TokenPrices(PRICE_IN, PRICE_OUT)
Lie = Callable[[Receipt, int], Receipt]  # (honest receipt, n-th signature of its request)


def priced(r: Receipt, tokens_out: int) -> Receipt:
    """``r`` for ``tokens_out`` tokens, priced right and in step: only the count is a lie."""
    amount = cost(PRICES, r.tokens_in, tokens_out)
    return dataclasses.replace(r, tokens_out=tokens_out, amount=amount,
                               cumulative=r.cumulative - r.amount + amount)


class LyingSigner:
    """Signs what ``lie`` makes of each receipt, with the node's own key (or ``key``)."""

    def __init__(self, honest: ReceiptSigner, lie: Lie, key: ReceiptSigner | None = None):
        self.honest, self.lie, self.key = honest, lie, key or honest
        self.address = honest.address
        self.count: Counter[str] = Counter()

    def sign(self, receipt: Receipt) -> Receipt:
        self.count[receipt.request_id] += 1
        return self.key.sign(self.lie(receipt, self.count[receipt.request_id]))
