"""Turning a request into prompt token ids with the model's tokenizer."""

from __future__ import annotations

import contextlib
from typing import Any

from agoranet.api import jsonlimits
from agoranet.engines.base import GenerationRequest, Message
from agoranet.errors import InvalidRequestError

__all__ = ["encode_prompt", "render_chat", "template_renders_tools"]


def _template_message(message: Message) -> dict[str, Any]:
    """A message as chat templates expect it: a call's arguments as an object."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            function = dict(call.get("function") or {})
            with contextlib.suppress(ValueError):  # not JSON: the template gets it as sent
                function["arguments"] = jsonlimits.loads(function.get("arguments") or "{}",
                                                         what="the call's arguments")
            calls.append({**call, "function": function})
        out["tool_calls"] = calls
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def template_renders_tools(tokenizer: Any) -> bool:
    """Whether the chat template shows the model the tools it is given."""
    if tokenizer.chat_template is None:
        return False
    chat = [{"role": "user", "content": "hi"}]
    tool = {"type": "function", "function": {
        "name": "probe_tool_x7", "description": "d", "parameters": {"type": "object"}}}
    try:
        plain = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        with_tools = tokenizer.apply_chat_template(chat, tools=[tool], tokenize=False,
                                                   add_generation_prompt=True)
    except Exception:  # jinja raises its own zoo of errors from templates
        return False
    return bool(with_tools != plain)


def render_chat(tokenizer: Any, request: GenerationRequest) -> str:
    """The chat template applied to the request's messages."""
    if tokenizer.chat_template is None:
        raise InvalidRequestError("this model has no chat template; use /v1/completions")
    messages = [_template_message(m) for m in request.messages or ()]
    # Under tool_choice "none" no tool may be called: like vLLM's
    # --exclude-tools-when-tool-choice-none, the model is not shown them (shown tools it
    # may not call, a model trained to call them tends to answer nothing).
    tools = [dict(t) for t in request.tools] if request.tool_choice != "none" else []
    try:
        text = tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            tokenize=False,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
        )
    except Exception as exc:  # jinja raises its own zoo of errors from templates
        raise InvalidRequestError(f"cannot apply the chat template: {exc}") from exc
    return str(text)


def encode_prompt(tokenizer: Any, request: GenerationRequest) -> list[int]:
    if request.messages is not None:
        text = render_chat(tokenizer, request)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(request.prompt or "", add_special_tokens=True)["input_ids"]
    if not ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    return [int(i) for i in ids]
