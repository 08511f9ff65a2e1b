"""What a gateway key may buy from the tool market: which tools, from whom, at what price.

A key's policy may carry three fields for tools (``agoranet keys create --tools GLOB
--tool-seller URL --max-tool-price N``, or ``policy`` in ``POST /agoranet/keys``):

- ``tools``: glob patterns of the tool names it may call (``echo``, ``summar*``);
- ``tool_sellers``: the sellers it may pay, each a root URL (a glob pattern:
  ``http://127.0.0.1:*``) or a seller's address;
- ``max_tool_price``: the most one call may cost, in base units.

As with a key's models, every key of the chain applies (a key is never wider than its
parent): a tool must match a pattern of each key that lists tools, a seller each key
that lists sellers, and a call's price stays within the lowest cap. A key without them
allows every tool, seller and price. A tool the key may not call, or a call none of
whose sellers the key may pay within its cap, is refused with a 403 before anything is
reserved or paid; a seller whose quote for these arguments is above the cap is not
paid (:meth:`ToolLimits.reserver` refuses the reservation). The listing a key sees
(``GET /agoranet/tools``, its MCP tools) holds only what it may buy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final

from agoranet.errors import InvalidRequestError, PermissionDeniedError
from agoranet.gateway.budget import Reservation, Reserver
from agoranet.gateway.keystore import MAX_AMOUNT, KeyRecord

if TYPE_CHECKING:
    from agoranet.gateway.tool_directory import ToolSeller
    from agoranet.registry.tool_offer import OfferedTool

__all__ = ["TOOL_FIELDS", "CappedReserver", "ToolLimits", "check_tool_fields"]

TOOL_FIELDS: Final = frozenset({"tools", "tool_sellers", "max_tool_price"})
_MAX_PATTERNS: Final = 64
_MAX_PATTERN_CHARS: Final = 300


def check_tool_fields(policy: dict[str, Any]) -> None:
    """The tool fields of a key's ``policy``, checked (400 for a bad value)."""
    for name in ("tools", "tool_sellers"):
        value = policy.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not 1 <= len(value) <= _MAX_PATTERNS or not all(
                isinstance(p, str) and 1 <= len(p) <= _MAX_PATTERN_CHARS for p in value):
            raise InvalidRequestError(f"'policy.{name}' must be a list of 1 to {_MAX_PATTERNS} "
                                      f"patterns of 1 to {_MAX_PATTERN_CHARS} characters",
                                      param="policy")
    cap = policy.get("max_tool_price")
    if cap is not None and (type(cap) is not int or not 0 <= cap <= MAX_AMOUNT):
        raise InvalidRequestError(f"'policy.max_tool_price' must be a whole number of base "
                                  f"units, 0 to {MAX_AMOUNT}", param="policy")


def _lists(chain: Sequence[KeyRecord], name: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(key.policy[name]) for key in chain
                 if key.policy and key.policy.get(name) is not None)


@dataclass(frozen=True)
class ToolLimits:
    """The tool limits of one key's chain (none: everything allowed)."""

    key: str = ""
    tools: tuple[tuple[str, ...], ...] = ()  # one list of patterns per key that sets one
    sellers: tuple[tuple[str, ...], ...] = ()
    max_price: int | None = None

    @classmethod
    def of(cls, chain: Sequence[KeyRecord]) -> ToolLimits:
        """The limits of ``chain`` (the key first, then its ancestors)."""
        caps = [key.policy["max_tool_price"] for key in chain
                if key.policy and key.policy.get("max_tool_price") is not None]
        return cls(chain[0].name if chain else "", _lists(chain, "tools"),
                   _lists(chain, "tool_sellers"), min(caps) if caps else None)

    def allows_tool(self, name: str) -> bool:
        return all(any(fnmatchcase(name, p) for p in patterns) for patterns in self.tools)

    def allows_seller(self, seller: ToolSeller) -> bool:
        return all(any(fnmatchcase(seller.root, p) or p.lower() == seller.identity.lower()
                       for p in patterns) for patterns in self.sellers)

    def allows_price(self, amount: int) -> bool:
        return self.max_price is None or amount <= self.max_price

    def check_tool(self, name: str) -> None:
        """403 unless the key may call the tool ``name``."""
        if not self.allows_tool(name):
            raise PermissionDeniedError(f"the key '{self.key}' may not call the tool "
                                        f"'{name}' (its policy's 'tools')", param="name")

    def usable(self, name: str, sellers: Sequence[tuple[ToolSeller, OfferedTool]]
               ) -> list[tuple[ToolSeller, OfferedTool]]:
        """The sellers of ``name`` the key may pay, at a fixed price within its cap (a
        varying price is checked on the seller's quote); a 403 if none."""
        allowed = [(s, t) for s, t in sellers if self.allows_seller(s)]
        if not allowed:
            raise PermissionDeniedError(f"the key '{self.key}' may pay none of the sellers of "
                                        f"the tool '{name}' (its policy's 'tool_sellers')",
                                        param="name")
        within = [(s, t) for s, t in allowed
                  if t.price.amount is None or self.allows_price(t.price.amount)]
        if not within:
            cheapest = min(t.price.amount or 0 for _, t in allowed)
            raise PermissionDeniedError(
                f"the tool '{name}' costs {cheapest} base units a call at its cheapest seller, "
                f"above the key '{self.key}''s cap of {self.max_price} (its policy's "
                "'max_tool_price')", param="name")
        return within

    def reserver(self, inner: Reserver) -> Reserver:
        """``inner``, refusing (403) a reservation above the key's cap: a call whose price
        is only known from the seller's quote is never paid above it."""
        return inner if self.max_price is None else CappedReserver(inner, self.max_price,
                                                                   self.key)


class CappedReserver:
    """A :class:`~agoranet.gateway.budget.Reserver` that holds no more than ``cap`` a call."""

    def __init__(self, inner: Reserver, cap: int, key: str) -> None:
        self.inner = inner
        self.cap = cap
        self.key = key

    async def reserve(self, amount: int) -> Reservation:
        if amount > self.cap:
            raise PermissionDeniedError(
                f"this call would cost {amount} base units, above the key '{self.key}''s cap "
                f"of {self.cap} a call (its policy's 'max_tool_price'); nothing was paid",
                param="arguments")
        return await self.inner.reserve(amount)
