"""Shared pieces of OpenAI-style HTTP handlers: JSON bodies in, error JSON out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agoranet.api import jsonlimits
from agoranet.api.errors import error_body, error_from_exception
from agoranet.api.streaming import EventStreamResponse
from agoranet.errors import InvalidJSONError, InvalidRequestError

__all__ = ["Handler", "http_error", "openai_errors", "parse_json_object", "read_json", "respond"]

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


def openai_errors(handler: Handler) -> Handler:
    """Every failure of an OpenAI route leaves as OpenAI's error JSON."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:  # mapped by type in api.errors; unknown ones become 500
            status, body, headers = error_from_exception(exc)
            if status >= 500:
                logger.error("request failed", exc_info=exc)
            return JSONResponse(body, status_code=status, headers=headers)

    return wrapped


async def http_error(request: Request, exc: Exception) -> Response:
    """404/405 from routing, in OpenAI's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal server error"
    return JSONResponse(error_body(f"{detail}: {request.method} {request.url.path}"),
                        status_code=status)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 (413 if too large) that says what is
    wrong with it. Bounded: see :mod:`agoranet.api.jsonlimits`."""
    try:
        return jsonlimits.loads_object(raw, what="the body", max_bytes=None)
    except InvalidJSONError as exc:
        raise InvalidRequestError(str(exc)) from None


async def read_json(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


def respond(result: BaseModel | AsyncIterator[bytes], headers: dict[str, str] | None = None
            ) -> Response:
    """A JSON response for a wire model, an SSE response for a stream of frames."""
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(exclude_none=True),
                        media_type="application/json", headers=headers)
    return EventStreamResponse(result, headers)  # type: ignore[return-value]
