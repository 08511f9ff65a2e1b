"""A Responses API request (``POST /v1/responses``) as a chat completion request.

The network's nodes serve chat completions; the gateway serves OpenAI's Responses API
on top of them, so every node serves it without change. This module turns the
request's ``instructions``, ``input`` items (messages, function calls and their
outputs), function ``tools``, ``tool_choice``, ``text.format`` and sampling fields into
a chat completion body, after the stored conversation of ``previous_response_id``.

What the network cannot do is refused with a 400 naming the field, never ignored:
built-in tools (web search, file search, computer use, ...), images, files and audio in
the input, reasoning settings, ``background``, ``conversation``, stored prompts,
``truncation: "auto"``, and ``include`` values other than output logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from agoranet.errors import InvalidRequestError

__all__ = ["MAX_INPUT_ITEMS", "ChatPlan", "to_chat"]

MAX_INPUT_ITEMS: Final = 4096
_LOGPROBS_INCLUDE: Final = "message.output_text.logprobs"

# Fields that change nothing the network does (hints, tracing, the echoed metadata),
# taken as they come.
_ACCEPTED: Final = frozenset({
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools",
    "tool_choice", "parallel_tool_calls", "text", "stream", "store", "previous_response_id",
    "metadata", "user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
    "include", "top_logprobs", "truncation", "reasoning", "service_tier", "stream_options",
    "seed", "agoranet",
})
# Fields that would change the answer's meaning and that the network does not do.
_REFUSED: Final = {
    "background": "background responses are not supported: call without 'background'",
    "conversation": "conversations are not supported: use previous_response_id",
    "prompt": "stored prompts are not supported: send instructions and input",
    "max_tool_calls": "max_tool_calls is not supported",
    "context_management": "context_management is not supported",
}


@dataclass(frozen=True)
class ChatPlan:
    """The chat completion body for the nodes, and the conversation it continues (the
    messages before ``instructions``, for storing with the answer)."""

    body: dict[str, Any]
    conversation: list[dict[str, Any]]


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _text_of(content: Any, param: str) -> str:
    """A message's content as text: a string, or input/output text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of content parts", param)
    texts = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise _bad("a content part must be an object", where)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            if not isinstance(part.get("text"), str):
                raise _bad("a text part needs a string 'text'", f"{where}.text")
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise _bad(f"content parts of type {kind!r} are not supported (the network's "
                       "models take text)", f"{where}.type")
    return "".join(texts)


def _messages(items: Any) -> list[dict[str, Any]]:
    """``input`` as chat messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise _bad("input must be a string or a list of input items", "input")
    if len(items) > MAX_INPUT_ITEMS:
        raise _bad(f"input has more than {MAX_INPUT_ITEMS} items", "input")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise _bad("an input item must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad("role must be one of user, assistant, system, developer",
                           f"{where}.role")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _text_of(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = _function_call(item, where)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]  # text, then calls, in one turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not call_id:
                raise _bad("a function_call_output needs its call_id", f"{where}.call_id")
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _text_of(output, f"{where}.output")})
        else:
            raise _bad(f"input items of type {kind!r} are not supported (messages, "
                       "function_call and function_call_output are)", f"{where}.type")
    return messages


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not isinstance(call_id, str) or not call_id:
        raise _bad("a function_call needs its call_id", f"{where}.call_id")
    if not isinstance(name, str) or not name:
        raise _bad("a function_call needs the function's name", f"{where}.name")
    if not isinstance(arguments, str):
        raise _bad("a function_call's arguments are a JSON string", f"{where}.arguments")
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools must be a list", "tools")
    converted = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _bad(f"tools of type {kind!r} are not supported: the network runs function "
                       "tools, which your code executes", f"{where}.type")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict")
                    if tool.get(k) is not None}
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("tool_choice must be 'auto', 'none', 'required' or "
               "{'type': 'function', 'name': ...}", "tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        raise _bad("text must be an object", "text")
    if text.get("verbosity") is not None:
        raise _bad("text.verbosity is not supported", "text.verbosity")
    unknown = set(text) - {"format", "verbosity"}
    if unknown:
        raise _bad(f"unknown field text.{sorted(unknown)[0]}", f"text.{sorted(unknown)[0]}")
    form = text.get("format")
    if form is None:
        return None
    if not isinstance(form, dict):
        raise _bad("text.format must be an object", "text.format")
    kind = form.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: form[k] for k in ("name", "schema", "description", "strict")
                  if form.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("text.format.type must be 'text', 'json_object' or 'json_schema'",
               "text.format.type")


def _check_refused(body: dict[str, Any]) -> None:
    for name, why in _REFUSED.items():
        if body.get(name) not in (None, False):
            raise _bad(why, name)
    unknown = sorted(set(body) - _ACCEPTED - set(_REFUSED))
    if unknown:
        raise _bad(f"unknown field '{unknown[0]}'", unknown[0])
    if body.get("truncation") not in (None, "disabled"):
        raise _bad("truncation 'auto' is not supported: a request longer than the model's "
                   "context is refused, never cut", "truncation")
    reasoning = body.get("reasoning")
    if reasoning is not None and (not isinstance(reasoning, dict)
                                  or any(v is not None for v in reasoning.values())):
        raise _bad("reasoning settings are not supported by the network's models",
                   "reasoning")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise _bad("only service_tier 'auto' or 'default' is supported", "service_tier")
    include = body.get("include") or []
    if not isinstance(include, list) or any(i != _LOGPROBS_INCLUDE for i in include):
        raise _bad(f"include may only name '{_LOGPROBS_INCLUDE}'", "include")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16 or any(
            not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512
            for k, v in metadata.items())):
        raise _bad("metadata is at most 16 string pairs (keys up to 64 characters, values "
                   "up to 512)", "metadata")


def to_chat(body: dict[str, Any], history: list[dict[str, Any]]) -> ChatPlan:
    """The chat completion body for ``body`` after the stored ``history`` (the messages of
    its ``previous_response_id``, or none)."""
    _check_refused(body)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("model is required", "model")
    if body.get("input") is None:
        raise _bad("input is required", "input")
    conversation = [*history, *_messages(body["input"])]
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("instructions must be a string", "instructions")
    messages = [{"role": "system", "content": instructions}] if instructions else []
    chat: dict[str, Any] = {"model": body["model"], "messages": messages + conversation}
    for ours, theirs in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"),
                         ("top_p", "top_p"), ("parallel_tool_calls", "parallel_tool_calls"),
                         ("seed", "seed"), ("agoranet", "agoranet")):
        if body.get(ours) is not None:
            chat[theirs] = body[ours]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("text") is not None and (form := _response_format(body["text"])) is not None:
        chat["response_format"] = form
    if _LOGPROBS_INCLUDE in (body.get("include") or []) or body.get("top_logprobs"):
        chat["logprobs"] = True
        if body.get("top_logprobs"):
            chat["top_logprobs"] = body["top_logprobs"]
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return ChatPlan(chat, conversation)
