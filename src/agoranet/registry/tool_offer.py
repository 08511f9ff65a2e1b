"""A tool server's offer: which paid tools it sells, at what price, paid how.

Published at ``GET /.well-known/agoranet`` like a node's
:class:`~agoranet.registry.offer.Offer`, signed by the same rules
(:mod:`agoranet.registry.signing`) and registered in the same on-chain registry
(:mod:`agoranet.registry.onchain`: the hash of its canonical JSON, its signer the
registering address). ``kind`` is always ``"tools"``, so the bytes a tool offer's
signature covers can never be read as a node's offer, nor the other way round.

Each tool states its name, description, input and output JSON schemas and its price
in the stablecoin's base units per call: fixed (``price.amount``), or
(``price.varies``, ``amount`` None) computed from the call's arguments, which the
seller's 402 quotes for each call (a buyer asks unpaid first, then reserves and pays
the quote), at most ``price.max_amount`` when the seller bounds it. ``schema_sha256`` (sha256 of the canonical input and output
schemas, :func:`schema_hash`) is what makes two sellers' tools "the same tool": the
same name and the same schema hash. A tool whose stated hash is not its schemas' is
refused when the offer is read.

In the registry a tool server is entered under its root URL followed by
:data:`TOOLS_PATH` (``/tools``, where its tools are called), a node under its
``/v1``; :func:`is_tool_url` tells them apart without fetching anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, Field, model_validator

from agoranet.registry.offer import PaymentOffer

__all__ = [
    "TOOLS_PATH",
    "TOOL_NAME_PATTERN",
    "OfferedTool",
    "ToolOffer",
    "ToolPrice",
    "build_tool_offer",
    "is_tool_url",
    "registry_url",
    "schema_hash",
    "tool_root",
]

TOOL_OFFER_VERSION: Final = 1
TOOLS_PATH: Final = "/tools"
# MCP's tool names (letters, digits, _ - .), safe in a URL path segment.
TOOL_NAME_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,64}$"


def schema_hash(input_schema: Mapping[str, Any], output_schema: Mapping[str, Any] | None) -> str:
    """sha256 (hex) of a tool's input and output JSON schemas in canonical JSON (sorted
    keys, no spaces): the same schemas give the same hash whoever serves them."""
    data = {"input": input_schema, "output": output_schema}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ToolPrice(BaseModel):
    """A tool's price per call, base units: ``amount`` when fixed; else ``varies`` (no
    ``amount``: the seller's 402 quotes each call's price from its arguments), at most
    ``max_amount`` if the seller states a bound."""

    amount: int | None = Field(default=None, ge=0)
    varies: bool = False
    max_amount: int | None = Field(default=None, ge=0)
    description: str | None = None  # how the price is computed, for people and agents

    @model_validator(mode="after")
    def _fixed_or_varies(self) -> ToolPrice:
        if self.varies == (self.amount is not None):
            raise ValueError("a tool's price has an amount (fixed) or varies, one of the two")
        if not self.varies and self.max_amount is not None:
            raise ValueError("a fixed price has no max_amount")
        return self

    @property
    def free(self) -> bool:
        return self.amount == 0 or (self.varies and self.max_amount == 0)

    def allows(self, quoted: int) -> bool:
        """Whether a call may cost ``quoted`` under this price."""
        if not self.varies:
            return quoted == self.amount
        return self.max_amount is None or quoted <= self.max_amount


class OfferedTool(BaseModel):
    """One tool on offer."""

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    price: ToolPrice
    schema_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _hash_is_the_schemas(self) -> OfferedTool:
        if self.schema_sha256 != schema_hash(self.input_schema, self.output_schema):
            raise ValueError(f"tool {self.name!r}: schema_sha256 is not the sha256 of its "
                             "input and output schemas")
        return self


class ToolOffer(BaseModel):
    """A tool server's signed offer (see the module's docstring)."""

    kind: Literal["tools"] = "tools"
    version: int = TOOL_OFFER_VERSION
    url: str  # the seller's root URL: /.well-known/agoranet, /tools/{name}, /mcp
    tools: list[OfferedTool]
    payment: PaymentOffer | None = None  # None: every tool is free
    # EIP-191 signature by ``signer`` over the offer without these two fields.
    signer: str | None = None
    signature: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ToolOffer:
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError("a tool offer names a tool twice")
        if self.payment is None and not all(t.price.free for t in self.tools):
            raise ValueError("a tool offer with priced tools needs payment terms")
        return self

    def tool(self, name: str) -> OfferedTool | None:
        return next((t for t in self.tools if t.name == name), None)


def build_tool_offer(url: str, tools: Iterable[Mapping[str, Any]],
                     payment: PaymentOffer | None = None) -> ToolOffer:
    """An unsigned offer for the tool server at ``url`` (its root) from tool descriptions:
    mappings with ``name``, ``description``, ``input_schema``, optional ``output_schema``,
    and ``price`` (an int: fixed base units per call; or a mapping of :class:`ToolPrice`'s
    fields). The schema hashes are computed here."""
    offered = []
    for tool in tools:
        price = tool["price"]
        input_schema = dict(tool["input_schema"])
        output_schema = tool.get("output_schema")
        output = dict(output_schema) if output_schema is not None else None
        offered.append(OfferedTool(
            name=tool["name"], description=tool.get("description", ""),
            input_schema=input_schema, output_schema=output,
            price=ToolPrice(amount=price) if isinstance(price, int) else
            ToolPrice.model_validate(price),
            schema_sha256=schema_hash(input_schema, output)))
    return ToolOffer(url=url.rstrip("/"), tools=offered, payment=payment)


def is_tool_url(url: str) -> bool:
    """Whether a registry entry's URL is a tool server's (ends in :data:`TOOLS_PATH`)."""
    return url.rstrip("/").endswith(TOOLS_PATH)


def tool_root(url: str) -> str:
    """A tool server's root URL from its registry URL (or its root itself)."""
    return url.rstrip("/").removesuffix(TOOLS_PATH)


def registry_url(root: str) -> str:
    """The URL a tool server registers under: its root followed by :data:`TOOLS_PATH`."""
    return tool_root(root) + TOOLS_PATH
