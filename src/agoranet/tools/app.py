"""The paid tool server's ASGI app: HTTP routes, ``/mcp``, the offer, settlement.

With ``payments`` (the node's payment parts: acceptor, ledger, settler) every priced
tool is paid with x402 and the settlement loop claims channels on chain in batches,
exactly as a node's does; without, the tools are served free (``--free``).
:func:`serve_tools` connects an upstream MCP server first (its tools join the
server's), then serves the app until interrupted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.api.errors import error_body
from agoranet.api.handlers import http_error
from agoranet.api.queued_logging import logging_off_the_loop
from agoranet.api.server import ServerLimits, uvicorn_config
from agoranet.node.payment_setup import NodePayments
from agoranet.node.settlement_loop import SettlementLoop
from agoranet.tools.http_routes import tool_routes
from agoranet.tools.limits import ArgumentLimits
from agoranet.tools.mcp_endpoint import PATH as MCP_PATH
from agoranet.tools.mcp_endpoint import McpToolEndpoint
from agoranet.tools.offer import OFFER_PATH, signed_tool_offer
from agoranet.tools.payments import ToolPayments
from agoranet.tools.server import ToolServer
from agoranet.tools.service import ToolService
from agoranet.tools.upstream import PriceList, Upstream, connect_upstream

__all__ = ["create_tool_app", "serve_tools"]


def create_tool_app(server: ToolServer, payments: NodePayments | None = None, *,
                    host: str = "127.0.0.1", limits: ArgumentLimits | None = None,
                    public_url: str | None = None) -> Starlette:
    """The app selling ``server``'s tools."""
    tool_payments = ToolPayments(payments.acceptor) if payments is not None else None
    service = ToolService(server, tool_payments, limits)
    mcp = McpToolEndpoint(service, host=host)
    loop = SettlementLoop(payments.settler, payments.settle_interval) \
        if payments is not None else None
    terms = payments.acceptor.terms if payments is not None else None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if payments is not None:
                stack.callback(payments.close)
            await stack.enter_async_context(mcp.running())
            if loop is not None:
                loop.start()
                stack.push_async_callback(loop.stop)
            yield

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "tools": len(server),
                             "calls": dataclasses.asdict(service.counts)})

    async def offer(request: Request) -> Response:
        if payments is None:
            return JSONResponse(error_body("this tool server is free: it has no signed offer",
                                           code="not_found"), status_code=404)
        signed = signed_tool_offer(server, payments.acceptor.terms, payments.account,
                                   public_url or str(request.base_url).rstrip("/"))
        return JSONResponse(signed.model_dump(mode="json"))

    routes = [Route("/health", health, methods=["GET"]),
              Route(OFFER_PATH, offer, methods=["GET"]),
              *tool_routes(service, terms),
              Route(MCP_PATH, mcp, methods=["GET", "POST", "DELETE"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.service = service
    app.state.settlement = loop
    app.state.payments = payments
    return app


async def serve_tools(server: ToolServer, payments: NodePayments | None, *, host: str,
                      port: int, limits: ArgumentLimits | None = None,
                      upstream: tuple[Upstream, PriceList] | None = None,
                      public_url: str | None = None, upstream_errlog: Any = None) -> None:
    """Serve ``server``'s tools (with ``upstream``, another MCP server's too, connected
    and priced before anything is served) until interrupted."""
    async with AsyncExitStack() as stack:
        if upstream is not None:
            for tool in await stack.enter_async_context(
                    connect_upstream(*upstream, errlog=upstream_errlog)):
                server.add_tool(tool)
        app = create_tool_app(server, payments, host=host, limits=limits,
                              public_url=public_url)
        with logging_off_the_loop():
            await uvicorn.Server(uvicorn_config(app, host, port, ServerLimits())).serve()
