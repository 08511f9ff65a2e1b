"""The MCP server's tools: thin calls onto the gateway's HTTP API, as one gateway key.

The same tools serve ``agoranet mcp`` (stdio, what desktop hosts launch: it talks to a
running gateway at a URL with a key) and the gateway's ``/mcp`` (streamable HTTP: the
tools act as the key of the request's ``Authorization: Bearer``). Which gateway and
which key is the business of the :data:`ClientSource` the server is built with.

A tool's failure is an MCP tool error with a plain message: the gateway's own (a key at
its cap says its cap and what is left), or a one-line account of bad arguments; never
a traceback. Amounts are integers in the stablecoin's base units, with the same amount
written out (``"0.000125"``) beside each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, Final

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, InputRequiredResult, ListToolsResult, PaginatedRequestParams
from mcp_types import Tool as MCPTool
from pydantic import Field, ValidationError

from agoranet import __version__
from agoranet.agents.gateway_client import GatewayClient
from agoranet.agents.mcp_market import PREFIX, call_market_tool, market_tools
from agoranet.errors import GatewayCallError
from agoranet.payments.amounts import format_amount

__all__ = ["TOOLS", "ClientSource", "build_mcp_server"]

# How a tool gets its gateway client for the call at hand (its context: the HTTP headers).
ClientSource = Callable[[Context[Any, Any]], AbstractAsyncContextManager[GatewayClient]]

TOOLS: Final = ("ask", "list_models", "budget", "create_subagent_key", "fine_tune",
                "fine_tune_status")

_INSTRUCTIONS = """\
agoranet buys AI inference on an open market of nodes, paid per token from a budget.
`ask` sends a question to the cheapest suitable node and says which node answered and
what it cost; `budget` shows what this key has spent and has left; `create_subagent_key`
gives a sub-agent a key with a budget carved out of this one; `list_models` lists the
models on offer; `fine_tune` and `fine_tune_status` train a LoRA adapter from chat
examples. Tools named `tool__NAME` are paid tools sold on the market: each call is
bought from the cheapest seller that answers, its price (in its description) charged to
this key's budget. Amounts are in the stablecoin's base units (1,000,000 = 1.00)."""


def _money(amount: int | None) -> str | None:
    return None if amount is None else format_amount(amount)


def _refused(exc: GatewayCallError) -> ToolError:
    """The gateway's refusal as a tool error: its own plain message, with what it was."""
    if exc.status == 0:
        return ToolError(exc.message)
    what = f"{exc.status} {exc.code}" if exc.code else str(exc.status)
    return ToolError(f"the gateway refused ({what}): {exc.message}")


def _plain(name: str, exc: ValidationError) -> str:
    """Pydantic's report on a tool's arguments, as one line a person reads."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "arguments"
        problems.append(f"'{where}': {error['msg'].rstrip('.')}")
    return f"bad arguments for {name}: {'; '.join(problems)}"


class _Server(MCPServer[Any]):
    """The SDK's server, with bad arguments told in one plain line, and the market's paid
    tools (:mod:`agoranet.agents.mcp_market`) listed and called beside its own."""

    clients: ClientSource | None = None  # where the market's tools are listed and bought

    async def _handle_list_tools(self, ctx: ServerRequestContext[Any, Any],
                                 params: PaginatedRequestParams | None) -> ListToolsResult:
        listed = await super()._handle_list_tools(ctx, params)
        market = await self._market_tools(Context(request_context=ctx, mcp_server=self))
        return listed.model_copy(update={"tools": [*listed.tools, *market]})

    async def _market_tools(self, ctx: Context[Any, Any]) -> list[MCPTool]:
        if self.clients is None:
            return []
        async with self.clients(ctx) as gateway:
            try:
                return market_tools(await gateway.tools())
            except GatewayCallError:  # no tools on this gateway, or none reachable
                return []

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context[Any, Any] | None = None
                        ) -> CallToolResult | InputRequiredResult:
        if name.startswith(PREFIX) and self.clients is not None and context is not None \
                and self._tool_manager.get_tool(name) is None:
            async with self.clients(context) as gateway:
                try:
                    bought = await call_market_tool(gateway, name, arguments)
                except GatewayCallError as exc:
                    raise _refused(exc) from exc
            if bought is not None:
                return bought
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(_plain(name, exc.__cause__)) from exc.__cause__
            raise


def build_mcp_server(clients: ClientSource) -> MCPServer[Any]:
    """The agoranet MCP server; each tool call gets its gateway client from ``clients``."""
    # The MCP transport's debug logs carry whole messages, a new key's secret among them:
    # they never go below INFO, whatever -vv asks of the rest.
    for name in ("mcp", "sse_starlette"):
        logger = logging.getLogger(name)
        if logger.level < logging.INFO:
            logger.setLevel(logging.INFO)
    server = _Server("agoranet", version=__version__, instructions=_INSTRUCTIONS,
                     log_level="WARNING")
    server.clients = clients

    async def ask(
        prompt: Annotated[str, Field(min_length=1, description="The question or task.")],
        ctx: Context[Any, Any],
        system: Annotated[str | None, Field(description="A system prompt.")] = None,
        model: Annotated[str | None, Field(
            description="A model from list_models (default: the cheapest).")] = None,
        max_tokens: Annotated[int | None, Field(
            ge=1, description="The most tokens the answer may have.")] = None,
        max_price_out: Annotated[int | None, Field(
            ge=0, description="The most to pay per million output tokens, base units.")] = None,
    ) -> dict[str, Any]:
        """Ask a model on the agoranet market. Returns the answer, the node that served it
        and what it cost (base units, charged to this key's budget)."""
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt})
        async with clients(ctx) as gateway:
            try:
                if model is None:
                    model = await _cheapest(gateway)
                body: dict[str, Any] = {"model": model, "messages": messages}
                if max_tokens is not None:
                    body["max_tokens"] = max_tokens
                if max_price_out is not None:
                    body["agoranet"] = {"max_price_out": max_price_out}
                reply = await gateway.chat(body)
            except GatewayCallError as exc:
                raise _refused(exc) from exc
        summary = reply.get("agoranet") or {}
        choice = (reply.get("choices") or [{}])[0]
        nodes = list(summary.get("nodes") or [])
        amount = int(summary.get("amount") or 0)
        return {"answer": (choice.get("message") or {}).get("content", ""),
                "model": reply.get("model", model), "node": nodes[-1] if nodes else None,
                "nodes": nodes, "cost": amount, "cost_display": _money(amount),
                "usage": reply.get("usage"), "finish_reason": choice.get("finish_reason"),
                "request_id": summary.get("request_id")}

    async def list_models(ctx: Context[Any, Any]) -> dict[str, Any]:
        """The models this key may use, each with its cheapest price (base units per
        million tokens), how many nodes serve it and what they offer."""
        async with clients(ctx) as gateway:
            try:
                return {"models": await gateway.models()}
            except GatewayCallError as exc:
                raise _refused(exc) from exc

    async def budget(ctx: Context[Any, Any]) -> dict[str, Any]:
        """This key's budget: spent, reserved (requests in flight), remaining, and what it
        can spend now (the least its key chain or the gateway's budget has left)."""
        async with clients(ctx) as gateway:
            try:
                view = await gateway.budget()
            except GatewayCallError as exc:
                raise _refused(exc) from exc
        view["display"] = {name: _money(view.get(name))
                           for name in ("budget", "spent", "reserved", "remaining", "available")}
        return view

    async def create_subagent_key(
        name: Annotated[str, Field(description="The new key's name (letters, digits, . _ -).")],
        budget: Annotated[int, Field(ge=0, description="Its budget, base units, carved out of"
                                                       " what this key has left.")],
        ctx: Context[Any, Any],
        models: Annotated[list[str] | None, Field(
            description="Model name patterns it may use (default: this key's).")] = None,
        expires_in_s: Annotated[int | None, Field(
            gt=0, description="Seconds until it stops working.")] = None,
    ) -> dict[str, Any]:
        """Mint a child key for a sub-agent, with a budget taken from this key's. The
        secret ('key') is shown once: hand it to the sub-agent as its API key."""
        body: dict[str, Any] = {"name": name, "budget": budget}
        if models is not None:
            body["models"] = models
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        async with clients(ctx) as gateway:
            try:
                made = await gateway.create_key(body)
            except GatewayCallError as exc:
                raise _refused(exc) from exc
        return {"name": made["name"], "parent": made["parent"], "key": made["key"],
                "budget": made["budget"], "budget_display": _money(made["budget"]),
                "models": made["models"], "expires": made["expires"]}

    async def fine_tune(
        model: Annotated[str, Field(min_length=1, description="The base model to adapt.")],
        examples: Annotated[list[dict[str, Any]], Field(
            min_length=1, description="Chat examples, each {\"messages\": [{\"role\", "
                                      "\"content\"}, ...]} ending with the assistant's turn.")],
        ctx: Context[Any, Any],
        epochs: Annotated[int | None, Field(ge=1, le=100)] = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Start a LoRA fine-tuning job on a node from chat examples; follow it with
        fine_tune_status (its 'id' and 'node'). When it succeeds, 'fine_tuned_model' is the
        adapter's model name, usable with ask on nodes that serve adapters. On a node that
        charges for training, the job's most ('max_charge', base units) is reserved from
        this key's budget, and what it trained ('charged') is spent once fine_tune_status
        sees it end."""
        body: dict[str, Any] = {"model": model, "examples": examples}
        if epochs is not None:
            body["epochs"] = epochs
        if seed is not None:
            body["seed"] = seed
        async with clients(ctx) as gateway:
            try:
                return await gateway.fine_tune(body)
            except GatewayCallError as exc:
                raise _refused(exc) from exc

    async def fine_tune_status(
        job_id: Annotated[str, Field(min_length=1, description="The job's 'id'.")],
        node: Annotated[str, Field(min_length=1, description="The job's 'node'.")],
        ctx: Context[Any, Any],
    ) -> dict[str, Any]:
        """A fine-tuning job's status (queued, running, succeeded, failed, cancelled), its
        progress in steps, and when done the fine-tuned model's name."""
        async with clients(ctx) as gateway:
            try:
                return await gateway.fine_tune_status(job_id, node)
            except GatewayCallError as exc:
                raise _refused(exc) from exc

    for tool in (ask, list_models, budget, create_subagent_key, fine_tune, fine_tune_status):
        server.add_tool(tool, structured_output=False)
    return server


async def _cheapest(gateway: GatewayClient) -> str:
    models = await gateway.models()
    if not models:
        raise ToolError("no model is on offer to this key right now")
    best = min(models, key=lambda m: (m["cheapest_price"]["output_per_million"],
                                      m["cheapest_price"]["input_per_million"], m["id"]))
    return str(best["id"])
