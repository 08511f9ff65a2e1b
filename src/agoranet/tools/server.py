"""The set of tools a server sells: what a developer builds in Python.

::

    from agoranet.tools import ToolServer

    tools = ToolServer("weather")

    @tools.tool(price=2_000)                      # 0.002 USDC per call
    def forecast(city: str, days: int = 3) -> list[float]:
        "Daily highs for the next days."
        ...

    @tools.tool(price=lambda args: 10 * len(args["text"]))   # per input character
    async def summarize(text: str) -> str:
        ...

``agoranet tools serve mymodule:tools`` then sells them over MCP and HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from agoranet.errors import ConfigError, ToolNotFoundError
from agoranet.tools.definition import Price, Tool

__all__ = ["ToolServer"]

_F = TypeVar("_F", bound=Callable[..., Any])


class ToolServer:
    """Named paid tools, in the order they were added."""

    def __init__(self, name: str = "agoranet-tools", *, instructions: str | None = None) -> None:
        self.name = name
        self.instructions = instructions
        self._tools: dict[str, Tool] = {}

    def tool(self, *, price: Price, name: str | None = None, description: str | None = None,
             max_price: int | None = None) -> Callable[[_F], _F]:
        """Decorator: sell the function as a tool at ``price`` (the function is unchanged);
        ``max_price`` bounds a price computed from the arguments (stated in the offer)."""
        def register(fn: _F) -> _F:
            self.add(fn, price=price, name=name, description=description, max_price=max_price)
            return fn

        return register

    def add(self, fn: Callable[..., Any], *, price: Price, name: str | None = None,
            description: str | None = None, max_price: int | None = None) -> Tool:
        """Sell ``fn`` as a tool at ``price``; the tool."""
        return self.add_tool(Tool.from_function(fn, price=price, name=name,
                                                description=description, max_price=max_price))

    def add_tool(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ConfigError(f"two tools are named {tool.name!r}")
        self._tools[tool.name] = tool
        return tool

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolNotFoundError(f"no tool named {name[:100]!r} here; GET /tools lists them"
                                    ) from None

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)
