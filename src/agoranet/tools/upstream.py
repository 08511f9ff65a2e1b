"""Prices on another MCP server's tools, without changing it.

:func:`connect_upstream` starts the server (``--mcp-upstream 'CMD ARGS'``, spoken to
over stdio) or connects to it (``--mcp-upstream-url URL``, streamable HTTP), lists its
tools and returns one paid :class:`~agoranet.tools.definition.Tool` per tool, with its
own schemas and the price the seller gave it (:class:`PriceList`). A call is checked
against the tool's input schema and paid here first, then forwarded; an answer that is
an error (``isError``) is charged nothing and its text says why. Text content is
passed on (joined), structured content as it is.

Prices: ``NAME=AMOUNT`` per tool (base units per call), ``*=AMOUNT`` for every tool
not named. A tool of the upstream server without a price is refused at start (a typo
would otherwise give a tool away), and so is a price for a tool it does not have.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import httpx2
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from agoranet.errors import ConfigError, ToolFailedError
from agoranet.payments.accept.ledger import MAX_AMOUNT
from agoranet.tools.definition import Tool

__all__ = ["DEFAULT_PRICE", "PriceList", "Upstream", "connect_upstream"]

DEFAULT_PRICE: Final = "*"
_TIMEOUT: Final = 120.0


@dataclass(frozen=True)
class PriceList:
    """Base units per call, by tool name (``*``: every other tool)."""

    prices: Mapping[str, int]

    @classmethod
    def parse(cls, specs: Iterable[str]) -> PriceList:
        """From ``NAME=AMOUNT`` strings (ConfigError naming a bad one)."""
        prices: dict[str, int] = {}
        for spec in specs:
            name, sep, amount = spec.partition("=")
            name, amount = name.strip(), amount.strip()
            if not sep or not name or not amount.isdigit() or int(amount) > MAX_AMOUNT:
                raise ConfigError(f"--price {spec!r}: write NAME=AMOUNT (base units per call, "
                                  f"0 to {MAX_AMOUNT}), or *=AMOUNT for every other tool")
            if name in prices:
                raise ConfigError(f"--price: tool {name!r} is priced twice")
            prices[name] = int(amount)
        return cls(prices)

    def price(self, tool: str) -> int | None:
        return self.prices.get(tool, self.prices.get(DEFAULT_PRICE))

    def check(self, names: Iterable[str]) -> None:
        """Every tool priced, every price for a tool that exists."""
        names = list(names)
        unpriced = [n for n in names if self.price(n) is None]
        if unpriced:
            raise ConfigError(f"the upstream MCP server's tools {', '.join(unpriced)} have no "
                              "price: give each one (--price NAME=AMOUNT) or all (--price "
                              "'*=AMOUNT')")
        unknown = sorted(set(self.prices) - set(names) - {DEFAULT_PRICE})
        if unknown:
            raise ConfigError(f"--price names tools the upstream MCP server does not have: "
                              f"{', '.join(unknown)} (it has: {', '.join(names) or 'none'})")


@dataclass(frozen=True)
class Upstream:
    """Where the upstream MCP server is: a command (stdio) or a URL."""

    command: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ConfigError("give one of --mcp-upstream 'CMD' and --mcp-upstream-url URL")
        if self.command is not None and not shlex.split(self.command):
            raise ConfigError("--mcp-upstream: the command is empty")


@asynccontextmanager
async def connect_upstream(upstream: Upstream, prices: PriceList,
                           *, errlog: Any = None) -> AsyncIterator[list[Tool]]:
    """The upstream server's tools, priced, while connected to it."""
    async with AsyncExitStack() as stack:
        if upstream.command is not None:
            argv = shlex.split(upstream.command)
            # the seller's own command: it gets this process's environment, as from a shell
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
            more = {} if errlog is None else {"errlog": errlog}
            read, write = await stack.enter_async_context(stdio_client(params, **more))
        else:
            assert upstream.url is not None
            http = await stack.enter_async_context(httpx2.AsyncClient(
                timeout=httpx2.Timeout(_TIMEOUT)))
            read, write = await stack.enter_async_context(
                streamable_http_client(upstream.url, http_client=http))
        session = await stack.enter_async_context(ClientSession(read, write))
        try:
            await session.initialize()
            listed = (await session.list_tools()).tools
        except Exception as exc:  # the upstream's failure, said at start
            raise ConfigError(f"the upstream MCP server did not list its tools: "
                              f"{type(exc).__name__}: {exc}") from exc
        prices.check(t.name for t in listed)
        tools = []
        for listed_tool in listed:
            price = prices.price(listed_tool.name)
            assert price is not None
            output = listed_tool.output_schema
            if not output or output.get("type") != "object":
                output = None  # its text is passed on as {"result": text}
            tools.append(Tool.from_schema(
                listed_tool.name, listed_tool.description or "", listed_tool.input_schema,
                output or _TEXT_OUTPUT, price,
                _forward(session, listed_tool.name, structured=output is not None)))
        yield tools


_TEXT_OUTPUT: Final = {"type": "object", "properties": {"result": {"type": "string"}},
                       "required": ["result"]}


def _forward(session: ClientSession, name: str, *, structured: bool) -> Any:
    async def run(arguments: dict[str, Any]) -> Any:
        try:
            result = await session.call_tool(name, arguments, read_timeout_seconds=_TIMEOUT)
        except Exception as exc:
            raise ToolFailedError(f"the upstream MCP server failed on {name}: "
                                  f"{type(exc).__name__}: {exc}; nothing was charged") from exc
        text = "\n".join(getattr(c, "text", "") for c in result.content
                         if getattr(c, "type", "") == "text")
        if result.is_error:
            raise ToolFailedError(f"tool {name} failed upstream: {text[:1000]}; nothing was "
                                  "charged")
        if structured and isinstance(result.structured_content, dict):
            return result.structured_content
        return {"result": text}

    return run
