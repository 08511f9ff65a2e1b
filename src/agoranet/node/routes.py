"""Thin HTTP routes of the node; the logic lives in :mod:`agoranet.node.service`.

A paid request arrives parsed and prepared already (the payment middleware priced it):
the route takes it, and its metering, from the scope (:mod:`agoranet.node.metering`)
rather than reading the body again."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.api.handlers import http_error, openai_errors, read_json, respond
from agoranet.api.types import (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
)
from agoranet.node.metering import route_request
from agoranet.node.service import InferenceService
from agoranet.registry.offer import Offer

__all__ = ["http_error", "openai_errors", "read_json", "routes"]


def routes(service: InferenceService, offer: Offer) -> list[Route]:
    @openai_errors
    async def chat_completions(request: Request) -> Response:
        body, prepared, metering = await route_request(request, ChatCompletionRequest,
                                                       "chat.completions")
        return respond(await service.chat(body, prepared=prepared, metering=metering))

    @openai_errors
    async def completions(request: Request) -> Response:
        body, prepared, metering = await route_request(request, CompletionRequest,
                                                       "completions")
        return respond(await service.completion(body, prepared=prepared, metering=metering))

    @openai_errors
    async def models(request: Request) -> Response:
        return respond(service.model_list())

    @openai_errors
    async def model(request: Request) -> Response:
        return respond(service.model_card(request.path_params["model_id"]))

    @openai_errors
    async def tokenize(request: Request) -> Response:
        """vLLM-compatible token count, used by upstream engines in front of a node."""
        body = TokenizeRequest.model_validate(await read_json(request))
        prepared = await service.tokenize(body)
        return JSONResponse(
            {"count": prepared.prompt_tokens, "max_model_len": prepared.context_length}
        )

    async def health(request: Request) -> Response:
        stats = service.engine.stats()
        return JSONResponse({"status": "ok", "engine": service.engine.name, **stats})

    async def well_known(request: Request) -> Response:
        return Response(offer.model_dump_json(), media_type="application/json")

    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", model, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/.well-known/agoranet", well_known, methods=["GET"]),
    ]
