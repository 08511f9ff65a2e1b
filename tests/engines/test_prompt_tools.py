"""Which tools the model is shown: all of them, except under tool_choice "none"."""

from __future__ import annotations

from typing import Any

from agoranet.engines.base import GenerationRequest, Message
from agoranet.engines.prompt import render_chat

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                         "parameters": {"type": "object"}}}


def _render(tiny_loaded: Any, **fields: Any) -> str:
    return render_chat(tiny_loaded.tokenizer, GenerationRequest(
        model="tiny", messages=[Message(role="user", content="Weather in Oslo?")], **fields))


def test_tools_are_shown_unless_none_may_be_called(tiny_loaded: Any) -> None:
    plain = _render(tiny_loaded)
    for choice in (None, "auto", "required",
                   {"type": "function", "function": {"name": "get_weather"}}):
        assert "get_weather" in _render(tiny_loaded, tools=(TOOL,), tool_choice=choice)
    assert _render(tiny_loaded, tools=(TOOL,), tool_choice="none") == plain
