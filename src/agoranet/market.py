"""The market's vocabulary: model names, token prices and the only cost function.

Everything that names a model or prices tokens (the node's 402 and receipts, the
payer's receipt checks, the gateway's ranking, fine-tuning jobs) goes through this
module, so payer and node can never disagree on what a name means or what a request
costs.

- :class:`ModelName`: a base model, or a base model with a LoRA adapter, written
  ``BASE@adapter:<sha256>``; parsed and printed here only.
- :class:`TokenPrices`: input and output prices per million tokens, in the
  stablecoin's base units. :func:`cost` turns token counts into an amount: an
  integer, rounded up to the next base unit, never a float. A request's worst case
  (:func:`worst_case`) is its prompt plus ``max_tokens``; since the cost is monotone
  in the counts, a charge never exceeds its worst case.
- :class:`PriceBook`: one model's prices in an offer (base, adapter surcharge,
  commitments surcharge, training): :meth:`PriceBook.prices` answers what a request
  for a given name pays per token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ADAPTER_SEPARATOR",
    "PER_MILLION",
    "ModelName",
    "PriceBook",
    "TokenPrices",
    "cost",
    "training_cost",
    "with_commitments",
    "worst_case",
]

PER_MILLION: Final = 1_000_000
ADAPTER_SEPARATOR: Final = "@adapter:"
"""Between a base model and an adapter id in a model name: ``BASE@adapter:<sha256>``."""

_ADAPTER_ID: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class ModelName:
    """A model a request asks for: ``base``, with a LoRA ``adapter`` (its sha256) or not."""

    base: str
    adapter: str | None = None

    @classmethod
    def parse(cls, name: str) -> ModelName:
        """``name`` as written in a request; ValueError for an adapter id that is not 64
        lowercase hex digits (a name without the separator is a plain base model)."""
        base, found, ident = name.partition(ADAPTER_SEPARATOR)
        if not found:
            return cls(name)
        if not _ADAPTER_ID.fullmatch(ident):
            raise ValueError(f"adapter id must be 64 lowercase hex digits, got {ident!r}")
        return cls(base, ident)

    @staticmethod
    def base_of(name: str) -> str:
        """The base model of ``name`` without checking its adapter id (for lookups)."""
        return name.partition(ADAPTER_SEPARATOR)[0]

    @staticmethod
    def names_adapter(name: str) -> bool:
        """Whether ``name`` asks for an adapter on its base model."""
        return ADAPTER_SEPARATOR in name

    @property
    def is_adapter(self) -> bool:
        return self.adapter is not None

    def __str__(self) -> str:
        return self.base if self.adapter is None else f"{self.base}{ADAPTER_SEPARATOR}{self.adapter}"


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

    def __add__(self, other: TokenPrices) -> TokenPrices:
        return TokenPrices(self.input_per_million + other.input_per_million,
                           self.output_per_million + other.output_per_million)


_FREE: Final = TokenPrices(0, 0)


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
    return prices + TokenPrices(per_million, per_million)


def training_cost(tokens: int, price_per_million: int) -> int:
    """What ``tokens`` training tokens cost at ``price_per_million``, rounded up."""
    return cost(TokenPrices(price_per_million, 0), tokens, 0)


@dataclass(frozen=True, slots=True)
class PriceBook:
    """One model's prices: the base prices, the surcharge on a request for an adapter, the
    surcharge per token on a request that asks for commitments, and training."""

    base: TokenPrices
    adapter_surcharge: TokenPrices = field(default=_FREE)
    commitments_per_million: int = 0
    training_per_million: int = 0

    def prices(self, name: ModelName | str, *, commitments: bool = False) -> TokenPrices:
        """What a request for ``name`` pays per million tokens (with the commitments
        surcharge when it asks for them)."""
        adapter = (name.is_adapter if isinstance(name, ModelName)
                   else ModelName.names_adapter(name))
        return self.per_token(adapter=adapter, commitments=commitments)

    def per_token(self, *, adapter: bool = False, commitments: bool = False) -> TokenPrices:
        """The prices of a request to an adapter or the base model, with commitments or
        without."""
        prices = self.base + self.adapter_surcharge if adapter else self.base
        if commitments:
            prices = with_commitments(prices, self.commitments_per_million)
        return prices
