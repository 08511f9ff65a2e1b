"""Paid tools: sell plain typed Python functions (or another MCP server's tools) over MCP
and HTTP, paid per call with x402 (``agoranet tools serve``).

::

    from agoranet.tools import ToolServer

    tools = ToolServer("text")

    @tools.tool(price=1_000)
    def shout(text: str) -> str:
        "The text in capitals."
        return text.upper()
"""

from __future__ import annotations

from agoranet.tools.definition import Price, Tool
from agoranet.tools.server import ToolServer

__all__ = ["Price", "Tool", "ToolServer"]
