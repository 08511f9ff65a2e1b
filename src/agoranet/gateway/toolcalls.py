"""Tool-call deltas as nodes stream them, joined into an answer's ``message.tool_calls``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["join_call_deltas"]


def join_call_deltas(deltas: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's streamed tool-call deltas (``index``; ``id``, ``type`` and the function's
    ``name`` on a call's first; ``arguments`` in pieces) joined into whole calls, in index
    order."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        call = calls.setdefault(int(delta["index"]), {
            "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if delta.get("id"):
            call["id"] = delta["id"]
        if delta.get("type"):
            call["type"] = delta["type"]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] = function["name"]
        call["function"]["arguments"] += function.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]
