"""Token prices to amounts: integers in base units, rounded up, never a float.

Prices are per million tokens. A request's worst case is its prompt tokens plus
``max_tokens`` at the model's prices; what it is charged is its prompt plus the
tokens it generated. Both round up to the next base unit, and since the cost is
monotone in the token counts, a charge never exceeds its worst case. A request
that asks for commitments pays the offer's commitment price on every token, on
top of both prices (:func:`with_commitments`), under the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["PER_MILLION", "TokenPrices", "cost", "with_commitments", "worst_case"]

PER_MILLION: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class TokenPrices:
    """Input and output prices per million tokens, in the stablecoin's base units."""

    input_per_million: int
    output_per_million: int

    def __post_init__(self) -> None:
        if self.input_per_million < 0 or self.output_per_million < 0:
            raise ValueError("prices must not be negative")

    @property
    def is_free(self) -> bool:
        return self.input_per_million == 0 and self.output_per_million == 0


def cost(prices: TokenPrices, tokens_in: int, tokens_out: int) -> int:
    """What ``tokens_in`` prompt and ``tokens_out`` completion tokens cost, rounded up."""
    if tokens_in < 0 or tokens_out < 0:
        raise ValueError("token counts must not be negative")
    micro = tokens_in * prices.input_per_million + tokens_out * prices.output_per_million
    return -(-micro // PER_MILLION)


def worst_case(prices: TokenPrices, prompt_tokens: int, max_tokens: int) -> int:
    """The most a request may cost: its prompt plus ``max_tokens`` generated."""
    return cost(prices, prompt_tokens, max_tokens)


def with_commitments(prices: TokenPrices, per_million: int) -> TokenPrices:
    """``prices`` of a request that asks for commitments: ``per_million`` more on every token."""
    if per_million < 0:
        raise ValueError("prices must not be negative")
    return TokenPrices(prices.input_per_million + per_million,
                       prices.output_per_million + per_million)
