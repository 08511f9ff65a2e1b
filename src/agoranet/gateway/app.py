"""The gateway's ASGI app: one local OpenAI endpoint over the whole network."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agoranet import __version__
from agoranet.api.handlers import http_error, openai_errors, read_json
from agoranet.api.limits import BodyLimitMiddleware
from agoranet.api.metrics_route import metrics_route
from agoranet.api.openapi import OPERATIONS, openapi_route
from agoranet.api.requestlog import RequestObserver
from agoranet.api.streaming import EventStreamResponse
from agoranet.config import GatewaySettings
from agoranet.errors import ConfigError, ModelNotFoundError, ReputationListError
from agoranet.gateway.agent_routes import AGENT_PATHS, MCP_PATH, agent_routes
from agoranet.gateway.audit_budget import AuditBudget
from agoranet.gateway.auditing import Auditor
from agoranet.gateway.budget import Budget
from agoranet.gateway.completions import complete
from agoranet.gateway.directory import NodeDirectory
from agoranet.gateway.embeddings import embed
from agoranet.gateway.extension import GatewayExtension
from agoranet.gateway.key_routes import key_routes
from agoranet.gateway.keyaccess import authenticate
from agoranet.gateway.keysetup import job_owner_salt
from agoranet.gateway.keystore import KeyStore
from agoranet.gateway.metrics import OBSERVED_PATHS, GatewayMetrics
from agoranet.gateway.node_client import node_client
from agoranet.gateway.owner_gate import owner_gate
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.policy import Policy, load_policy
from agoranet.gateway.reputation import Reputation
from agoranet.gateway.response_store import ResponseStore
from agoranet.gateway.responses_routes import responses_routes
from agoranet.gateway.scorelist import check_list, read_list, verdicts
from agoranet.gateway.service import GatewayService
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.tool_market_setup import tool_market
from agoranet.gateway.tool_routes import tool_routes

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

__all__ = ["build_service", "create_gateway_app", "open_reputation"]


def build_service(settings: GatewaySettings, policy: Policy | None = None,
                  account: LocalAccount | None = None) -> GatewayService:
    """The gateway's parts; with ``account`` (and ``settings.rpc_url``) it pays paid nodes.
    If a part cannot be built (a bad reputation list, an unreachable registry, a reference
    model that does not load), those built before it are closed again."""
    with contextlib.ExitStack() as built:
        client = node_client()
        spend = SpendLog(settings.spend_log_path())
        built.callback(spend.close)
        reputation = open_reputation(settings)
        built.callback(reputation.close)
        registry = None
        if settings.registry_rpc_url:
            from agoranet.registry.onchain import registry_at

            registry = registry_at(settings.registry_rpc_url).entries
        payers = None
        if account is not None and settings.rpc_url:
            payers = NodePayers(settings.rpc_url, account, settings.channels_dir(),
                                settings.deposit, chain_timeout_s=settings.chain_timeout_s)
            built.callback(payers.close)
        budget = Budget(settings.budget, spent=spend.total())
        if payers is not None:
            payers.count_in(budget, spend)  # a node's unreceipted claim is spent too
        auditor = None
        if settings.audit_reference:
            from agoranet.engines.hf import load_model

            reference = load_model(settings.audit_reference)
            limit = AuditBudget(settings.audit_budget_share, budget, spend.audit_total(),
                                floor=settings.audit_budget_floor)
            auditor = Auditor(reference, reference.info.name, share=settings.audit_share,
                              payers=payers, limit=limit, spend=spend)
        service = GatewayService(
            NodeDirectory(settings.nodes, client, settings.refresh_s, registry, reputation),
            _with_settings(policy or load_policy(settings.policy_file), settings),
            budget, spend, client, settings.default_max_tokens, payers, auditor,
        )
        if settings.tools or registry is not None:
            service.tools = tool_market(settings, client, budget, spend, reputation,
                                        registry, account)
        built.pop_all()  # the service owns them now (GatewayService.aclose)
    return service


def _with_settings(policy: Policy, settings: GatewaySettings) -> Policy:
    """The policy with what the settings set over it."""
    if settings.token_timeout_s is None:
        return policy
    return policy.model_copy(update={"token_timeout_s": settings.token_timeout_s})


def open_reputation(settings: GatewaySettings) -> Reputation:
    """The gateway's reputation store, with the trusted signed lists of the settings imported
    (a list that is bad or whose signer is not trusted stops the gateway: ConfigError)."""
    reputation = Reputation(settings.reputation_path())
    try:
        for path in settings.reputation_lists:
            scores = read_list(path)
            signer = check_list(scores, settings.reputation_trust)
            with contextlib.suppress(ReputationListError):  # an older copy than one held
                reputation.import_verdicts(signer, scores.issued_at, verdicts(scores, signer))
    except ReputationListError as exc:
        reputation.close()
        raise ConfigError(f"{path}: {exc}") from exc
    return reputation


def _node_rows(service: GatewayService) -> list[dict[str, Any]]:
    rows = []
    for node in service.directory.nodes.values():
        record = reputation.record(node.identity) if (reputation := node.reputation) else None
        ban = node.lasting_ban()
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
            "identity": node.identity,
            "score": round(node.reliability, 4),
            "audits_passed": record.audits_passed if record else None,
            "audits_failed": record.audits_failed if record else None,
            "tokens_audited": record.tokens_audited if record else None,
            "receipt_disagreements": record.receipts if record else None,
            "last_verdict": (record.last_verdict if record
                             else (node.audits[-1] if node.audits else None)),
            "ban_reason": ban.reason if ban else (node.events[-1] if node.banned() else None),
            "banned_until": ban.until if ban else None,
        })
    return rows


def create_gateway_app(service: GatewayService,
                       settings: GatewaySettings | None = None,
                       keys: KeyStore | None = None,
                       extensions: Sequence[GatewayExtension] = ()) -> Starlette:
    """The gateway's routes over ``service``; request bodies within ``settings``' limits.
    With ``keys``, OpenAI's routes need a valid gateway key (``/agoranet/keys`` manages
    them); without, the gateway is open, the global budget alone applies. ``extensions``
    (the agents' MCP endpoint) add routes, run in the app's lifespan and are bound to it."""
    settings = settings or GatewaySettings()
    @openai_errors
    async def chat(request: Request) -> Response:
        access = authenticate(keys, request) if keys is not None else None  # before the body
        result, _ = await service.chat(await read_json(request), access)
        if isinstance(result, dict):
            return JSONResponse(result)
        return EventStreamResponse(result)  # type: ignore[return-value]

    @openai_errors
    async def completions(request: Request) -> Response:
        access = authenticate(keys, request) if keys is not None else None  # before the body
        result, _ = await complete(service, await read_json(request), access)
        if isinstance(result, dict):
            return JSONResponse(result)
        return EventStreamResponse(result)  # type: ignore[return-value]

    @openai_errors
    async def embeddings(request: Request) -> Response:
        access = authenticate(keys, request) if keys is not None else None  # before the body
        answer, _ = await embed(service, await read_json(request), access)
        return JSONResponse(answer)

    @openai_errors
    async def models(request: Request) -> Response:
        listed = service.model_list()
        if keys is not None:
            access = authenticate(keys, request)
            listed["data"] = [m for m in listed["data"] if access.allows_model(m["id"])]
        return JSONResponse(listed)

    @openai_errors
    async def model(request: Request) -> Response:
        name = request.path_params["model_id"]
        access = authenticate(keys, request) if keys is not None else None
        for entry in service.model_list()["data"]:
            if entry["id"] == name and (access is None or access.allows_model(name)):
                return JSONResponse(entry)
        raise ModelNotFoundError(f"no node on the network serves '{name}'", param="model")

    async def nodes(request: Request) -> Response:
        return JSONResponse({"nodes": _node_rows(service),
                             "budget": {"limit": service.budget.limit,
                                        "spent": service.budget.spent,
                                        "reserved": service.budget.reserved},
                             "audits": (service.auditor.status()
                                        if service.auditor is not None else None)})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "nodes": len(service.directory.nodes)})

    metrics = GatewayMetrics()  # /metrics and one log line per request
    metrics.attach(service)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.directory.start()
        if service.tools is not None:
            service.tools.directory.start()
        try:
            async with AsyncExitStack() as running:
                for extension in extensions:
                    await running.enter_async_context(extension.running())
                yield
        finally:
            try:
                await service.aclose()
            finally:
                if keys is not None:
                    keys.close()

    routes: list[BaseRoute] = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        *responses_routes(service, keys, ResponseStore()),
        Route("/agoranet/nodes", nodes, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        metrics_route(metrics.registry, owner_gate(keys)),
        *(key_routes(keys) if keys is not None else []),
        *agent_routes(service, keys, job_owner_salt(settings.job_salt_path())),
        *(tool_routes(service.tools, service.budget, keys) if service.tools else []),
        *(route for extension in extensions for route in extension.routes()),
    ]
    served = {route.path for route in routes if isinstance(route, Route)}
    routes.append(_openapi_route(keyed=keys is not None, served=served))
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        middleware=[Middleware(RequestObserver, paths=OBSERVED_PATHS,
                               on_start=metrics.request_started,
                               on_done=metrics.request_done),
                    Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                               body_timeout_s=settings.body_timeout_s)],
        lifespan=lifespan,
    )
    for extension in extensions:
        extension.bind(app)
    app.state.metrics = metrics
    return app


def _openapi_route(*, keyed: bool, served: set[str]) -> Route:
    """``/openapi.json``; the chat request's ``agoranet`` field is the gateway's policy, and
    with keys OpenAI's routes take one (``Authorization: Bearer agn-...``)."""
    chat, models = ("POST", "/v1/chat/completions"), ("GET", "/v1/models")
    text, responses = ("POST", "/v1/completions"), ("POST", "/v1/responses")
    agents = [(m, p) for m, p in OPERATIONS if p.startswith(AGENT_PATHS)
              and (p != MCP_PATH or p in served)]
    openai = [(m, p) for m, p in OPERATIONS if p.startswith(("/v1/responses", "/v1/models/"))]
    vectors = ("POST", "/v1/embeddings")
    metrics = ("GET", "/metrics")  # the owner's key on a keyed gateway; open on an open one
    return openapi_route(title="agoranet gateway", version=__version__, operations={
        metrics: dataclasses.replace(OPERATIONS[metrics], bearer=keyed,
                                     errors=OPERATIONS[metrics].errors if keyed else ()),
        chat: dataclasses.replace(OPERATIONS[chat], fields={"agoranet": Policy}, bearer=keyed),
        text: dataclasses.replace(OPERATIONS[text], fields={"agoranet": Policy}, bearer=keyed),
        vectors: dataclasses.replace(OPERATIONS[vectors], fields={"agoranet": Policy},
                                     bearer=keyed),
        models: dataclasses.replace(OPERATIONS[models], bearer=keyed),
        **{op: dataclasses.replace(OPERATIONS[op], bearer=keyed) for op in agents + openai},
        responses: dataclasses.replace(OPERATIONS[responses], fields={"agoranet": Policy},
                                       bearer=keyed)})
