"""The market's paid tools as MCP tools: listed per caller, bought through the gateway.

Each tool the gateway lists (``GET /agoranet/tools``, as the caller's key) becomes an
MCP tool named ``tool__NAME`` (a second tool of the same name with other schemas:
``tool__NAME__`` and the first 8 hex digits of its schema hash), with the seller's
input schema and a description that ends with its price and how many sellers offer it.
Calling it buys one call (``POST /agoranet/tools/call``) under the key's budget; the
answer's structured content is the tool's result with what it cost, the seller and its
signed receipt. A refusal (over budget, no seller answered) is a tool error in the
gateway's own words.
"""

from __future__ import annotations

import json
from typing import Any, Final

from mcp_types import CallToolResult, TextContent
from mcp_types import Tool as MCPTool

from agoranet.agents.gateway_client import GatewayClient
from agoranet.payments.amounts import format_amount

__all__ = ["PREFIX", "call_market_tool", "market_tools", "mcp_names"]

PREFIX: Final = "tool__"


def mcp_names(listing: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The MCP name of each listed tool (the gateway lists the most-sold first per name)."""
    named: dict[str, dict[str, Any]] = {}
    for entry in listing:
        name = f"{PREFIX}{entry['name']}"
        if name in named:
            name = f"{name}__{entry['schema_sha256'][:8]}"
        named.setdefault(name, entry)
    return named


def _price_text(price: dict[str, Any]) -> str:
    if price.get("amount") is not None:
        amount = int(price["amount"])
        return f"{amount} base units ({format_amount(amount)}) per call"
    bound = price.get("max_amount")
    text = "set by the arguments"
    if bound is not None:
        text += f", at most {int(bound)} base units ({format_amount(int(bound))})"
    if price.get("description"):
        text += f": {price['description']}"
    return text


def market_tools(listing: list[dict[str, Any]]) -> list[MCPTool]:
    """The listed tools as MCP tools, each with its price in its description."""
    tools = []
    for name, entry in mcp_names(listing).items():
        sellers = len(entry.get("sellers") or [])
        description = (f"{entry.get('description') or entry['name']}\n\nPaid tool on the "
                       f"agoranet market: {_price_text(entry.get('price') or {})}, charged to "
                       f"this key's budget; {sellers} seller{'s' if sellers != 1 else ''}.")
        tools.append(MCPTool(name=name, description=description,
                             input_schema=entry.get("input_schema") or {"type": "object"}))
    return tools


async def call_market_tool(gateway: GatewayClient, name: str,
                           arguments: dict[str, Any]) -> CallToolResult | None:
    """Buy one call of the market tool MCP calls ``name``; None if no listed tool has
    that name. GatewayCallError if the gateway refuses."""
    entry = mcp_names(await gateway.tools()).get(name)
    if entry is None:
        return None
    answer = await gateway.call_tool({"name": entry["name"], "arguments": arguments,
                                      "schema_sha256": entry["schema_sha256"]})
    cost = int(answer.get("cost") or 0)
    content = {"result": answer.get("result"), "tool": answer.get("tool"),
               "seller": answer.get("seller"), "cost": cost, "cost_display": format_amount(cost),
               "receipt": answer.get("receipt"), "request_id": answer.get("id")}
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(content))],
                          structured_content=content)
