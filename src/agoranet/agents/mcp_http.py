"""``/mcp`` on the gateway: the MCP tools over streamable HTTP, as the caller's key.

A request to ``/mcp`` on a keyed gateway needs a valid key (``Authorization: Bearer
agn-...``), checked before the MCP transport sees it: a missing or bad key is a 401 in
OpenAI's error JSON. Each tool call then goes through the gateway's own routes (in
process, no socket) with the request's key, so the tools act exactly as that key would
over HTTP: its models, its policy, its budget chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx
from mcp.server.mcpserver import Context
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agoranet.agents.gateway_client import GatewayClient
from agoranet.agents.mcp_server import build_mcp_server
from agoranet.api.errors import error_from_exception
from agoranet.config import GatewaySettings
from agoranet.errors import AuthenticationError, ConfigError
from agoranet.gateway.agent_routes import MCP_PATH
from agoranet.gateway.app import create_gateway_app
from agoranet.gateway.keyaccess import bearer
from agoranet.gateway.keystore import KeyStore
from agoranet.gateway.service import GatewayService

__all__ = ["PATH", "McpEndpoint", "create_agent_gateway_app"]

PATH: Final = MCP_PATH
_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")
_CALL_TIMEOUT: Final = httpx.Timeout(600.0)


class McpEndpoint:
    """The ASGI app at ``/mcp``: a gateway extension (:class:`GatewayExtension`), bound to
    the gateway's app and run in its lifespan (:meth:`running`)."""

    def __init__(self, keys: KeyStore | None, *, host: str = "127.0.0.1") -> None:
        self._keys = keys
        self._gateway: ASGIApp | None = None
        self.server = build_mcp_server(self._client)
        # On a loopback gateway the SDK refuses other Host and Origin headers (DNS
        # rebinding); one listening wider is reached under names it cannot know.
        self._app = self.server.streamable_http_app(streamable_http_path=PATH, host=(
            host if host in _LOOPBACK else "0.0.0.0"))

    def routes(self) -> list[BaseRoute]:
        return [Route(PATH, self, methods=["GET", "POST", "DELETE"])]

    def bind(self, gateway: ASGIApp) -> None:
        """The gateway's app, which the tools call in process."""
        self._gateway = gateway

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.server.session_manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._keys is not None:
            try:
                self._keys.authenticate(bearer(Request(scope)))
            except AuthenticationError as exc:
                status, body, headers = error_from_exception(exc)
                await JSONResponse(body, status_code=status, headers=headers)(
                    scope, receive, send)
                return
        await self._app(scope, receive, send)

    @asynccontextmanager
    async def _client(self, ctx: Context[Any, Any]) -> AsyncIterator[GatewayClient]:
        if self._gateway is None:
            raise ConfigError("the MCP endpoint is not bound to a gateway app")
        headers = {}
        authorization = (ctx.headers or {}).get("authorization")
        if authorization:
            headers["Authorization"] = authorization
        transport = httpx.ASGITransport(app=self._gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                     headers=headers, timeout=_CALL_TIMEOUT) as http:
            yield GatewayClient(http)


def create_agent_gateway_app(service: GatewayService, settings: GatewaySettings | None = None,
                             keys: KeyStore | None = None) -> Starlette:
    """The gateway's app (:func:`create_gateway_app`) with its MCP endpoint at ``/mcp``."""
    settings = settings or GatewaySettings()
    return create_gateway_app(service, settings, keys,
                              extensions=[McpEndpoint(keys, host=settings.host)])
