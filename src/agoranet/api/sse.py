"""Server-sent events as OpenAI streams them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import BaseModel

__all__ = ["DONE", "iter_sse_data", "sse_event", "sse_json"]

DONE = b"data: [DONE]\n\n"


def sse_json(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event carrying a JSON object."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def sse_event(model: BaseModel) -> bytes:
    """One ``data:`` event carrying a wire model, without null fields."""
    return b"data: " + model.model_dump_json(exclude_none=True).encode() + b"\n\n"


async def iter_sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data:`` payloads of an SSE response, up to ``[DONE]``.

    The body is read to its end, so the connection goes back to the pool for the
    next request instead of being closed half-read.
    """
    done = False
    async for line in response.aiter_lines():
        if done or not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        yield data
