"""Thin HTTP routes of the node; the logic lives in :mod:`agoranet.node.service`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.api.errors import error_body, error_from_exception
from agoranet.api.streaming import EventStreamResponse
from agoranet.api.types import (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
    log_unknown_fields,
)
from agoranet.errors import InvalidRequestError
from agoranet.node.service import InferenceService
from agoranet.registry.offer import Offer

__all__ = ["http_error", "routes"]

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


def _error_response(exc: Exception) -> JSONResponse:
    status, body, headers = error_from_exception(exc)
    if status >= 500:
        logger.error("request failed", exc_info=exc)
    return JSONResponse(body, status_code=status, headers=headers)


def openai_errors(handler: Handler) -> Handler:
    """Every failure of an OpenAI route leaves as OpenAI's error JSON."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # mapped by type in api.errors; unknown ones become 500
            return _error_response(exc)

    return wrapped


async def http_error(request: Request, exc: Exception) -> Response:
    """404/405 from routing, in OpenAI's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal server error"
    message = f"{detail}: {request.method} {request.url.path}"
    return JSONResponse(error_body(message), status_code=status)


async def read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return body


def _respond(result: BaseModel | AsyncIterator[bytes]) -> Response:
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(exclude_none=True), media_type="application/json")
    return EventStreamResponse(result)  # type: ignore[return-value]


def routes(service: InferenceService, offer: Offer) -> list[Route]:
    @openai_errors
    async def chat_completions(request: Request) -> Response:
        body = ChatCompletionRequest.model_validate(await read_json(request))
        log_unknown_fields(body, "chat.completions")
        return _respond(await service.chat(body))

    @openai_errors
    async def completions(request: Request) -> Response:
        body = CompletionRequest.model_validate(await read_json(request))
        log_unknown_fields(body, "completions")
        return _respond(await service.completion(body))

    @openai_errors
    async def models(request: Request) -> Response:
        return _respond(service.model_list())

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
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/.well-known/agoranet", well_known, methods=["GET"]),
    ]
