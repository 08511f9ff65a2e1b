"""A key's tool fields (``tools``, ``tool_sellers``, ``max_tool_price``): the bounds a
policy may use exactly, and the 400 it gets one past them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from agoranet.errors import InvalidRequestError, PermissionDeniedError
from agoranet.gateway.tool_limits import ToolLimits, check_tool_fields
from agoranet.payments.accept.ledger import MAX_AMOUNT

LIST_RULE = "must be a list of 1 to 64 patterns of 1 to 300 characters"


@pytest.mark.parametrize("policy", [
    {"tools": ["t"] * 64}, {"tool_sellers": ["s" * 300]}, {"tools": ["a*"], "tool_sellers": ["0x*"]},
    {"max_tool_price": 0}, {"max_tool_price": MAX_AMOUNT}, {"tools": None},
])
def test_the_bounds_themselves_are_allowed(policy: dict[str, Any]) -> None:
    check_tool_fields(policy)


@pytest.mark.parametrize(("name", "value"), [
    ("tools", ["t"] * 65), ("tools", []), ("tool_sellers", ["s" * 301]), ("tools", [""]),
    ("tools", "echo"), ("tool_sellers", [3]),
])
def test_a_list_past_its_bounds_is_a_400(name: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        check_tool_fields({name: value})
    assert refused.value.param == "policy"
    assert str(refused.value) == f"'policy.{name}' {LIST_RULE}"


@pytest.mark.parametrize("cap", [-1, MAX_AMOUNT + 1, 1.5, "10", True])
def test_a_price_cap_past_its_bounds_is_a_400(cap: Any) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        check_tool_fields({"max_tool_price": cap})
    assert refused.value.param == "policy"
    assert str(refused.value) == ("'policy.max_tool_price' must be a whole number of base "
                                  f"units, 0 to {MAX_AMOUNT}")


def _seller(root: str, price: int | None) -> tuple[Any, Any]:
    return (SimpleNamespace(root=root, identity="0x" + "ab" * 20),
            SimpleNamespace(price=SimpleNamespace(amount=price)))


def test_what_a_key_outside_its_limits_is_told() -> None:
    limits = ToolLimits("scout", tools=(("echo",),), sellers=(("http://a*",),), max_price=50)
    with pytest.raises(PermissionDeniedError) as refused:
        limits.usable("echo", [_seller("http://b", 10)])
    assert refused.value.param == "name" and str(refused.value) == (
        "the key 'scout' may pay none of the sellers of the tool 'echo' (its policy's "
        "'tool_sellers')")
    with pytest.raises(PermissionDeniedError) as refused:
        limits.usable("echo", [_seller("http://a1", 90), _seller("http://a2", 70)])
    assert refused.value.param == "name" and str(refused.value) == (
        "the tool 'echo' costs 70 base units a call at its cheapest seller, above the key "
        "'scout''s cap of 50 (its policy's 'max_tool_price')")
    fixed_or_quoted = [_seller("http://a1", 50), _seller("http://a2", None)]
    assert limits.usable("echo", fixed_or_quoted) == fixed_or_quoted


async def test_a_quoted_price_over_the_cap_is_refused_before_any_reservation() -> None:
    held: list[int] = []

    class Inner:
        async def reserve(self, amount: int) -> Any:
            held.append(amount)
            return amount

    limits = ToolLimits("scout", max_price=50)
    capped = limits.reserver(Inner())  # type: ignore[arg-type]
    assert await capped.reserve(50) == 50 and held == [50]
    with pytest.raises(PermissionDeniedError) as refused:
        await capped.reserve(51)
    assert refused.value.param == "arguments" and held == [50]
    assert str(refused.value) == (
        "this call would cost 51 base units, above the key 'scout''s cap of 50 a call (its "
        "policy's 'max_tool_price'); nothing was paid")
    assert ToolLimits("scout").reserver(Inner()) is not None  # type: ignore[arg-type]


def test_the_limits_of_a_chain_name_its_key_and_take_the_lowest_cap() -> None:
    chain = [SimpleNamespace(name="child", policy={"max_tool_price": 80, "tools": ["e*"]}),
             SimpleNamespace(name="root", policy={"max_tool_price": 30}),
             SimpleNamespace(name="top", policy=None)]
    limits = ToolLimits.of(chain)  # type: ignore[arg-type]
    assert (limits.key, limits.max_price, limits.tools) == ("child", 30, (("e*",),))
    assert ToolLimits.of([]) == ToolLimits()
