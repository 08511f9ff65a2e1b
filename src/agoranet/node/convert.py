"""OpenAI wire requests to engine requests, and engine results to wire responses."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from agoranet.api.types import (
    AgoranetResult,
    ChatCompletionRequest,
    ChatMessage,
    CommitmentsOut,
    CompletionLogprobs,
    CompletionRequest,
    LogprobContent,
    Logprobs,
    TokenizeRequest,
    TopLogprob,
    Usage,
)
from agoranet.engines.base import (
    Delta,
    Finish,
    GenerationRequest,
    Message,
    TokenLogprob,
    ToolCallDelta,
)

__all__ = [
    "agoranet_result",
    "chat_logprobs",
    "completion_logprobs",
    "completion_logprobs_of",
    "from_chat",
    "from_completion",
    "from_tokenize",
    "message_of",
    "new_id",
    "now",
    "tool_call_deltas",
    "usage_of",
]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def message_of(message: ChatMessage) -> Message:
    """A wire message for an engine (tool calls kept in OpenAI's form)."""
    calls = tuple(c.model_dump() for c in message.tool_calls or ())
    return Message(message.role, message.text(), calls, message.tool_call_id)


def _set_fields(model: BaseModel) -> dict[str, Any]:
    """A wire object as sent: its unset optional fields left out (nested values untouched,
    so a schema's nulls stay)."""
    out = model.model_dump(by_alias=True)
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        if out.get(key) is None:
            out.pop(key, None)
        elif isinstance(getattr(model, name), BaseModel):
            out[key] = _set_fields(getattr(model, name))
    return out


def from_chat(request: ChatCompletionRequest, max_tokens: int) -> GenerationRequest:
    choice = request.tool_choice
    form = request.response_format
    return GenerationRequest(
        model=request.model,
        messages=tuple(message_of(m) for m in request.messages),
        tools=tuple({"type": "function", "function": _set_fields(t.function)}
                    for t in request.tools or ()),
        tool_choice=choice if isinstance(choice, str | None) else choice.model_dump(),
        parallel_tool_calls=request.parallel_tool_calls,
        response_format=None if form is None else _set_fields(form),
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        stop=tuple(request.stop_list()),
        logprobs=request.logprobs,
        top_logprobs=request.top_logprobs or 0,
        add_generation_prompt=request.add_generation_prompt,
        continue_final_message=request.continue_final_message,
        ignore_eos=request.ignore_eos,
        commitments=request.wants_commitments(),
    )


def from_completion(request: CompletionRequest, max_tokens: int) -> GenerationRequest:
    wants = request.logprobs is not None
    return GenerationRequest(
        model=request.model,
        prompt=request.prompt,
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
        stop=tuple(request.stop_list()),
        logprobs=wants,
        top_logprobs=request.logprobs or 0,
        ignore_eos=request.ignore_eos,
        commitments=request.wants_commitments(),
    )


def from_tokenize(request: TokenizeRequest) -> GenerationRequest:
    if request.messages is None:
        return GenerationRequest(model=request.model, prompt=request.prompt or "")
    return GenerationRequest(
        model=request.model,
        messages=tuple(message_of(m) for m in request.messages),
        add_generation_prompt=request.add_generation_prompt,
        continue_final_message=request.continue_final_message,
    )


def tool_call_deltas(pieces: Sequence[ToolCallDelta]) -> list[dict[str, Any]]:
    """Tool-call pieces in OpenAI's streaming shape: the first of a call has its id, type
    and name; every piece its index and some of the arguments."""
    out: list[dict[str, Any]] = []
    for piece in pieces:
        function: dict[str, Any] = {"arguments": piece.arguments}
        item: dict[str, Any] = {"index": piece.index}
        if piece.id is not None:
            item.update(id=piece.id, type="function")
        if piece.name is not None:
            function = {"name": piece.name, **function}
        item["function"] = function
        out.append(item)
    return out


def usage_of(finish: Finish) -> Usage:
    return Usage(
        prompt_tokens=finish.prompt_tokens,
        completion_tokens=finish.completion_tokens,
        total_tokens=finish.prompt_tokens + finish.completion_tokens,
    )


def agoranet_result(finish: Finish) -> AgoranetResult | None:
    """The response's ``agoranet`` object: the commitments, when they were asked for."""
    if finish.commitments is None:
        return None
    return AgoranetResult(commitments=CommitmentsOut(**finish.commitments.to_wire()))


def _top(entry: TokenLogprob) -> list[TopLogprob]:
    return [TopLogprob(token=t, logprob=lp, bytes=list(b)) for t, lp, b in entry.top]


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> Logprobs:
    return Logprobs(
        content=[
            LogprobContent(
                token=t.token, logprob=t.logprob, bytes=list(t.token_bytes), top_logprobs=_top(t),
                token_id=t.token_id,
            )
            for t in tokens
        ]
    )


def completion_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0,
                        text: str | None = None,
                        into: CompletionLogprobs | None = None) -> CompletionLogprobs:
    """The logprobs of ``tokens``, which made ``text`` (a stream delta's), starting at
    ``offset`` in the answer's text. A ``text_offset`` is OpenAI's: where the token starts
    in the returned text, so it never passes the end of ``text`` (a special token's text
    is hidden). ``into`` adds them to logprobs already built (a whole answer's)."""
    result = into if into is not None else CompletionLogprobs()
    end = offset + len(text) if text is not None else None
    for t in tokens:
        result.tokens.append(t.token)
        result.token_logprobs.append(t.logprob)
        result.top_logprobs.append({tok: lp for tok, lp, _ in t.top})
        result.text_offset.append(offset if end is None else min(offset, end))
        offset += len(t.token)
    return result


def completion_logprobs_of(deltas: Sequence[Delta]) -> CompletionLogprobs:
    """A whole answer's logprobs, counted delta by delta as a stream counts them."""
    result, offset = CompletionLogprobs(), 0
    for delta in deltas:
        completion_logprobs(delta.tokens, offset, delta.text, into=result)
        offset += len(delta.text)
    return result
