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
MAX_SSE_LINE: Final = 8 * 1024 * 1024  # bytes in one line of a stream we read
_NEWLINE: Final = re.compile(rb"\r\n|\r|\n")


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
    bytes is ``httpx.DecodingError`` (a peer cannot make us buffer more). Lines end
    with any of CRLF, CR, LF; they are split as bytes (the body is not turned into text
    as a whole) and each payload decoded once, whole: an event stream is UTF-8.
    """
    done = False
    pending: list[bytes] = []  # the start of a line whose end has not arrived
    size = 0
    async for chunk in response.aiter_bytes():
        lines = _NEWLINE.split(chunk)
        rest = lines.pop()
        if lines and pending:
            pending.append(lines[0])
            lines[0] = b"".join(pending)
            pending, size = [], 0
        for line in lines:
            data = None if done else _data(line)
            if data == b"[DONE]":
                done = True
            elif data is not None:
                yield data.decode("utf-8", "replace")
        if rest:
            pending.append(rest)
            size += len(rest)
            if size > max_line:
                raise httpx.DecodingError(f"a line of the event stream is longer than "
                                          f"{max_line} bytes", request=response.request)
    data = None if done else _data(b"".join(pending))  # a last line without its end
    if data is not None and data != b"[DONE]":
        yield data.decode("utf-8", "replace")


def _data(line: bytes) -> bytes | None:
    """The payload of a ``data:`` line, or None for any other line."""
    return line[5:].strip() if line.startswith(b"data:") else None
