"""The llamacpp engine cannot constrain its output yet: it refuses, never ignores (#13)."""

from __future__ import annotations

import asyncio

import pytest

from agoranet.engines.base import GenerationRequest, Message
from agoranet.engines.llamacpp import LlamaCppEngine
from agoranet.errors import InvalidRequestError

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": (TOOL,), "tool_choice": "required"}, "tools"),
    ({"tools": (TOOL,), "tool_choice": "none"}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
def test_tools_and_formats_are_refused(fields: dict[str, object], param: str) -> None:
    engine = object.__new__(LlamaCppEngine)  # no GGUF needed: refused before the model
    request = GenerationRequest(model="m", messages=(Message("user", "hi"),), **fields)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(engine.prepare(request))
    assert info.value.param == param
