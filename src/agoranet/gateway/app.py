"""The gateway's ASGI app: one local OpenAI endpoint over the whole network."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.api.handlers import http_error, openai_errors, read_json
from agoranet.api.streaming import EventStreamResponse
from agoranet.config import GatewaySettings
from agoranet.gateway.auditing import Auditor
from agoranet.gateway.budget import Budget
from agoranet.gateway.directory import NodeDirectory
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.policy import Policy, load_policy
from agoranet.gateway.service import GatewayService
from agoranet.gateway.spendlog import SpendLog

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

__all__ = ["build_service", "create_gateway_app"]

def build_service(settings: GatewaySettings, policy: Policy | None = None,
                  account: LocalAccount | None = None) -> GatewayService:
    """The gateway's parts; with ``account`` (and ``settings.rpc_url``) it pays paid nodes."""
    client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0),
                               limits=httpx.Limits(max_connections=512,
                                                   max_keepalive_connections=128))
    spend = SpendLog(settings.spend_log_path())
    registry = None
    if settings.registry_rpc_url:
        from agoranet.registry.onchain import registry_at

        registry = registry_at(settings.registry_rpc_url).entries
    payers = None
    if account is not None and settings.rpc_url:
        payers = NodePayers(settings.rpc_url, account, settings.channels_dir(), settings.deposit)
    auditor = None
    if settings.audit_reference:
        from agoranet.engines.hf import load_model

        reference = load_model(settings.audit_reference)
        auditor = Auditor(reference, reference.info.name, share=settings.audit_share,
                          payers=payers)
    return GatewayService(
        NodeDirectory(settings.nodes, client, settings.refresh_s, registry),
        policy or load_policy(settings.policy_file),
        Budget(settings.budget, spent=spend.total()),
        spend, client, settings.default_max_tokens, payers, auditor,
    )

def _node_rows(service: GatewayService) -> list[dict[str, Any]]:
    rows = []
    for node in service.directory.nodes.values():
        rows.append({
            "url": node.url,
            "models": [m.id for m in node.offer.models] if node.offer else [],
            "price": ({m.id: m.price.model_dump() for m in node.offer.models}
                      if node.offer else {}),
            "ttft_ms": node.ttft_ms, "tokens_per_s": node.tokens_per_s,
            "successes": node.successes, "failures": node.failures,
            "banned": node.banned(), "offer_error": node.offer_error,
            "events": node.events[-5:],
            "audits": node.audits[-5:],
        })
    return rows

def create_gateway_app(service: GatewayService) -> Starlette:
    @openai_errors
    async def chat(request: Request) -> Response:
        result, _ = await service.chat(await read_json(request))
        if isinstance(result, dict):
            return JSONResponse(result)
        return EventStreamResponse(result)  # type: ignore[return-value]

    @openai_errors
    async def models(request: Request) -> Response:
        return JSONResponse(service.model_list())

    async def nodes(request: Request) -> Response:
        return JSONResponse({"nodes": _node_rows(service),
                             "budget": {"limit": service.budget.limit,
                                        "spent": service.budget.spent,
                                        "reserved": service.budget.reserved}})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "nodes": len(service.directory.nodes)})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.directory.start()
        try:
            yield
        finally:
            await service.directory.stop()
            if service.auditor is not None:
                await service.auditor.stop()
            await service.client.aclose()
            service.spend.close()
            if service.payers is not None:
                service.payers.close()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/agoranet/nodes", nodes, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
