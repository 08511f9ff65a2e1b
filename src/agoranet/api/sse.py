"""Server-sent events as OpenAI streams them."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
from pydantic import BaseModel

__all__ = ["DONE", "MAX_SSE_LINE", "iter_sse_data", "sse_event", "sse_json"]

DONE = b"data: [DONE]\n\n"
MAX_SSE_LINE: Final = 8 * 1024 * 1024  # characters in one line of a stream we read
_NEWLINE: Final = re.compile(r"\r\n|\r|\n")


def sse_json(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event carrying a JSON object."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def sse_event(model: BaseModel) -> bytes:
    """One ``data:`` event carrying a wire model, without null fields."""
    return b"data: " + model.model_dump_json(exclude_none=True).encode() + b"\n\n"


async def iter_sse_data(response: httpx.Response, *,
                        max_line: int = MAX_SSE_LINE) -> AsyncIterator[str]:
    """The ``data:`` payloads of an SSE response, up to ``[DONE]``.

    The body is read to its end, so the connection goes back to the pool for the
    next request instead of being closed half-read. A line longer than ``max_line``
    characters is ``httpx.DecodingError`` (a peer cannot make us buffer more).
    """
    done = False
    async for line in _lines(response, max_line):
        if done or not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        yield data


async def _lines(response: httpx.Response, max_line: int) -> AsyncIterator[str]:
    """The lines of a text response (any of CRLF, CR, LF ends one), each at most
    ``max_line`` characters."""
    pending: list[str] = []
    size = 0
    async for text in response.aiter_text():
        *ended, rest = _NEWLINE.split(text)
        for part in ended:
            pending.append(part)
            yield "".join(pending)
            pending, size = [], 0
        pending.append(rest)
        size += len(rest)
        if size > max_line:
            raise httpx.DecodingError(f"a line of the event stream is longer than {max_line} "
                                      "characters", request=response.request)
    if size:
        yield "".join(pending)
