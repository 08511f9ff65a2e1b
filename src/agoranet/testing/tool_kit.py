"""Tools for tests of the paid tool server, and a tiny MCP server to price as an upstream.

``agoranet tools serve agoranet.testing.tool_kit:tools`` sells :data:`tools`; ``python
-m agoranet.testing.tool_kit`` is a stdio MCP server (unpriced) for ``--mcp-upstream``.
Every call that runs appends one line (``server tool``) to the file named by the
environment variable ``AGORANET_TEST_TOOL_CALLS`` (if set): a test counts which tools
ran, across processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, Field

from agoranet.tools import ToolServer

__all__ = ["CALLS_ENV", "ECHO_PRICE", "PER_CHAR", "WordCount", "calls", "tools", "upstream_main"]

CALLS_ENV: Final = "AGORANET_TEST_TOOL_CALLS"
ECHO_PRICE: Final = 1_000
PER_CHAR: Final = 7


def _ran(server: str, tool: str) -> None:
    path = os.environ.get(CALLS_ENV)
    if path:
        with Path(path).open("a", encoding="utf-8") as log:
            log.write(f"{server} {tool}\n")


def calls(path: Path) -> list[str]:
    """The calls logged so far in ``path`` (``server tool`` each)."""
    return path.read_text().splitlines() if path.exists() else []


class WordCount(BaseModel):
    words: int
    characters: int


tools = ToolServer("test-tools")


@tools.tool(price=ECHO_PRICE)
def echo(text: str, times: int = 1) -> str:
    """The text, repeated."""
    _ran("kit", "echo")
    return text * times


@tools.tool(price=lambda args: PER_CHAR * len(args["text"]), max_price=PER_CHAR * 10_000)
async def count(text: str = Field(min_length=1, max_length=10_000)) -> WordCount:
    """Words and characters in the text (priced per input character)."""
    _ran("kit", "count")
    return WordCount(words=len(text.split()), characters=len(text))


@tools.tool(price=500)
def boom(reason: str) -> str:
    """Always raises."""
    _ran("kit", "boom")
    raise RuntimeError(f"boom: {reason}")


def upstream_main() -> None:
    """A tiny stdio MCP server with two unpriced tools (``shout``, ``add``)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server: MCPServer[Any] = MCPServer("tiny-upstream", log_level="WARNING")

    def shout(text: str) -> str:
        """The text in capitals."""
        _ran("upstream", "shout")
        return text.upper()

    def add(a: int, b: int) -> int:
        """a + b"""
        _ran("upstream", "add")
        return a + b

    def fail(reason: str) -> str:
        """Always fails."""
        _ran("upstream", "fail")
        raise ToolError(reason)  # its message goes back to the caller

    for fn in (shout, add, fail):
        server.add_tool(fn)
    server.run("stdio")


if __name__ == "__main__":
    upstream_main()
