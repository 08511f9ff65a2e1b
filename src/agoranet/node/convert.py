"""OpenAI wire requests to engine requests, and engine results to wire responses."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from agoranet.api.types import (
    AgoranetResult,
    ChatCompletionRequest,
    CommitmentsOut,
    CompletionLogprobs,
    CompletionRequest,
    LogprobContent,
    Logprobs,
    TokenizeRequest,
    TopLogprob,
    Usage,
)
from agoranet.engines.base import Finish, GenerationRequest, Message, TokenLogprob

__all__ = [
    "agoranet_result",
    "chat_logprobs",
    "completion_logprobs",
    "from_chat",
    "from_completion",
    "from_tokenize",
    "new_id",
    "now",
    "usage_of",
]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def from_chat(request: ChatCompletionRequest, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        model=request.model,
        messages=tuple(Message(m.role, m.text()) for m in request.messages),
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
        messages=tuple(Message(m.role, m.text()) for m in request.messages),
        add_generation_prompt=request.add_generation_prompt,
        continue_final_message=request.continue_final_message,
    )


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


def completion_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    result = CompletionLogprobs()
    for t in tokens:
        result.tokens.append(t.token)
        result.token_logprobs.append(t.logprob)
        result.top_logprobs.append({tok: lp for tok, lp, _ in t.top})
        result.text_offset.append(offset)
        offset += len(t.token)
    return result
