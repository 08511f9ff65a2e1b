"""Prices are checked where they are made: free is allowed, negative never is, on either
side, and commitments at no extra price leave the prices as they were."""

from __future__ import annotations

import pytest

from agoranet.market import TokenPrices, cost, with_commitments


def test_a_free_price_list_is_allowed() -> None:
    free = TokenPrices(0, 0)
    assert free.is_free
    assert cost(free, 1000, 1000) == 0
    assert not TokenPrices(0, 1).is_free
    assert not TokenPrices(1, 0).is_free


@pytest.mark.parametrize(("inp", "out"), [(-1, 5), (5, -1), (-1, -1)])
def test_a_negative_price_on_either_side_is_refused(inp: int, out: int) -> None:
    with pytest.raises(ValueError, match=r"^prices must not be negative$"):
        TokenPrices(inp, out)


def test_a_negative_token_count_is_refused() -> None:
    prices = TokenPrices(1_000_000, 2_000_000)
    for tokens_in, tokens_out in ((-1, 0), (0, -1)):
        with pytest.raises(ValueError, match=r"^token counts must not be negative$"):
            cost(prices, tokens_in, tokens_out)


def test_commitments_add_their_price_to_both_sides() -> None:
    prices = TokenPrices(3, 7)
    assert with_commitments(prices, 0) == prices
    assert with_commitments(prices, 1) == TokenPrices(4, 8)
    with pytest.raises(ValueError, match=r"^prices must not be negative$"):
        with_commitments(prices, -1)
