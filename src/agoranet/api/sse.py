"""Server-sent events as OpenAI streams them."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

__all__ = ["DONE", "sse_event", "sse_json"]

DONE = b"data: [DONE]\n\n"


def sse_json(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event carrying a JSON object."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def sse_event(model: BaseModel) -> bytes:
    """One ``data:`` event carrying a wire model, without null fields."""
    return b"data: " + model.model_dump_json(exclude_none=True).encode() + b"\n\n"
