"""``GET /agoranet/tools``: each tool once, with every seller's price, schemes and score.

In process, over the in-memory sellers of test_tool_buying.py (signed offers, a real
reputation store): a tool sold by several sellers is listed once under its name and
schema hash, described by its cheapest seller, and each seller is shown with its own
price (a fixed amount, or "varies" with its bound), the schemes it takes (none for a free
seller without payment terms) and its reputation score, rounded to four places (0.5 for
a seller the store has not seen).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from test_tool_buying import SCHEMA, Market, Seller, build

from agoranet.gateway.reputation import EventKind
from agoranet.registry.tool_offer import build_tool_offer

__all__ = ["build"]  # the fixture of test_tool_buying.py


def test_the_listing_shows_each_seller_with_its_price_schemes_and_score(
        build: Callable[..., Market]) -> None:
    cheap, varying = Seller("cheap", 1000), Seller("varying", {"varies": True,
                                                               "max_amount": 3000})
    m = build(varying, cheap)
    free_root = "http://free.test"
    m.market.directory.add(free_root).offer = build_tool_offer(free_root, [
        {"name": "echo", "description": "Echoes for free.", "input_schema": SCHEMA,
         "price": 0}])
    m.reputation.add(cheap.account.address, cheap.root, EventKind.SUCCESS)
    score = m.reputation.score(cheap.account.address)
    assert score not in (0.5, round(score, 4))  # a score that rounding shows
    schema_hash = cheap.offer().tools[0].schema_sha256
    (listed,) = m.market.view()
    assert listed == {
        "name": "echo", "schema_sha256": schema_hash,
        "description": "Echoes for free.", "input_schema": SCHEMA, "output_schema": None,
        "price": {"amount": 0, "varies": False},
        "sellers": [
            {"url": free_root, "seller": free_root, "price": {"amount": 0, "varies": False},
             "schemes": [], "score": 0.5},
            {"url": cheap.root, "seller": cheap.account.address,
             "price": {"amount": 1000, "varies": False}, "schemes": ["batch-settlement"],
             "score": round(score, 4)},
            {"url": varying.root, "seller": varying.account.address,
             "price": {"varies": True, "max_amount": 3000}, "schemes": ["batch-settlement"],
             "score": 0.5},
        ]}


def test_a_seller_without_a_score_shows_the_neutral_one(build: Callable[..., Market]) -> None:
    seller = Seller("only", 1000)
    m = build(seller)
    (listing,) = m.market.listing()
    shown: dict[str, Any] = listing.view({})  # the store has never seen it
    assert [s["score"] for s in shown["sellers"]] == [0.5]
    assert listing.view({seller.account.address: 0.123456})["sellers"][0]["score"] == 0.1235


def test_fixed_prices_come_first_then_varying_ones_by_bound_unbounded_last(
        build: Callable[..., Market]) -> None:
    unbounded = Seller("aunbounded", {"varies": True})
    bounded = Seller("bbounded", {"varies": True, "max_amount": 600})
    fixed = Seller("cfixed", 1000)
    m = build(unbounded, bounded, fixed)
    (listing,) = m.market.listing()
    assert [s.root for s, _ in listing.sellers] == [fixed.root, bounded.root, unbounded.root]
    assert listing.tool.price.amount == 1000  # described by the first
