"""``/mcp``: the tools over MCP (streamable HTTP), paid with x402's MCP transport.

The x402 MCP transport: a paid tool called without payment answers a tool result with
``isError: true`` whose ``structuredContent`` (and first text content, as JSON) is the
x402 ``PaymentRequired``; the client retries with the ``PaymentPayload`` in the call's
``_meta["x402/payment"]``; the paid answer carries the settle response (with the signed
receipt) in the result's ``_meta["x402/payment-response"]``, and a voucher is charged
exactly that receipt once the result has gone out. A refused payment is again a
``PaymentRequired`` result (its ``error`` the reason). Any other failure -- bad
arguments, an unknown tool, a tool that raised -- is a tool error with one plain line,
and nothing is charged. The buyer names a call for its receipt in
``_meta["agoranet/request-id"]`` (over HTTP: ``x-request-id``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agoranet import __version__
from agoranet.errors import AgoranetError
from agoranet.payments import x402wire
from agoranet.tools.payments import MCP_RESOURCE
from agoranet.tools.request_ids import REQUEST_ID_META
from agoranet.tools.service import Answer, ToolService

__all__ = ["PATH", "PAYMENT_META", "PAYMENT_RESPONSE_META", "McpToolEndpoint"]

PATH: Final = "/mcp"
PAYMENT_META: Final = "x402/payment"
PAYMENT_RESPONSE_META: Final = "x402/payment-response"
_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")
_AFTER_KEY: Final = "agoranet.after_response"  # the scope's _AfterResponse
logger = logging.getLogger(__name__)


class McpToolEndpoint:
    """The ASGI app at ``/mcp``; run it within the app's lifespan (:meth:`running`)."""

    def __init__(self, service: ToolService, *, host: str = "127.0.0.1") -> None:
        self.service = service
        self.server: Server[Any] = Server(
            service.server.name, version=__version__,
            instructions=service.server.instructions,
            on_list_tools=self._list_tools, on_call_tool=self._call_tool)
        # On loopback the SDK refuses other Host and Origin headers (DNS rebinding); a
        # server listening wider is reached under names it cannot know.
        self._app = self.server.streamable_http_app(streamable_http_path=PATH, host=(
            host if host in _LOOPBACK else "0.0.0.0"))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.server.session_manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        after = _AfterResponse()

        async def sending(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and after.pending:
                await after.flush()  # the first part sent since a call answered: its result

        try:
            await self._app({**scope, _AFTER_KEY: after}, receive, sending)
        finally:  # a response cut short: its calls' charges are written all the same
            await after.close()

    @property
    def app(self) -> ASGIApp:
        return self._app

    async def _list_tools(self, ctx: ServerRequestContext[Any],
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(
            name=tool.name, description=tool.description, input_schema=tool.input_schema,
            output_schema=tool.output_schema) for tool in self.service.server])

    async def _call_tool(self, ctx: ServerRequestContext[Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        meta: dict[str, Any] = dict(params.meta or {})
        try:
            arguments = self.service.limits.check(params.arguments)
            payment = meta.get(PAYMENT_META)
            header = None
            if payment is not None:
                if not isinstance(payment, dict):
                    return _error(f"_meta[{PAYMENT_META!r}] must be an x402 PaymentPayload "
                                  "object")
                header = x402wire.encode_json(payment)
            outcome = await self.service.call(params.name, arguments, header,
                                              MCP_RESOURCE + params.name,
                                              meta.get(REQUEST_ID_META), charge_after=True)
        except AgoranetError as exc:
            return _error(str(exc))
        except Exception:  # never a traceback to the caller
            logger.exception("tool call %s failed", params.name[:100])
            return _error(f"tool {params.name[:100]} failed inside the tool server "
                          "(its log says why)")
        if isinstance(outcome, Answer):
            if outcome.charge is not None:
                await _charge_after_response(ctx, outcome.charge)
            return _answer(outcome)
        required = outcome.required.model_dump(by_alias=True, exclude_none=True, mode="json")
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(required)),
                     types.TextContent(text=outcome.error.message)],
            structured_content=required, is_error=True)


class _AfterResponse:
    """The charges of the paid calls one HTTP request to ``/mcp`` answers, each written
    once the part of its response that carries the call's result (with its receipt) has
    gone out: the first part sent after the call answered (a JSON body, or an SSE event;
    no yield to the event loop in between, so no next call is read before it)."""

    def __init__(self) -> None:
        self.open = True  # its response is still being sent
        self.pending: list[Callable[[], Awaitable[None]]] = []

    async def flush(self) -> None:
        while self.pending:
            await self.pending.pop(0)()

    async def close(self) -> None:
        self.open = False
        await self.flush()


async def _charge_after_response(ctx: ServerRequestContext[Any],
                                 write: Callable[[], Awaitable[None]]) -> None:
    """``write`` (a call's charge) once the HTTP response carrying the call's result has
    gone out; now if there is none to wait for (its request is over, or not HTTP)."""
    request = ctx.request
    scope = getattr(request, "scope", None)
    after = scope.get(_AFTER_KEY) if isinstance(scope, dict) else None
    if isinstance(after, _AfterResponse) and after.open:
        after.pending.append(write)
    else:
        await write()


def _answer(answer: Answer) -> types.CallToolResult:
    meta = None
    if answer.payment_response is not None:
        meta = {PAYMENT_RESPONSE_META: answer.payment_response}
    structured = answer.output if isinstance(answer.output, dict) else None
    return types.CallToolResult(content=[types.TextContent(text=answer.text)],
                                structured_content=structured, _meta=meta)


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)
