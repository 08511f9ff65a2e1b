"""Streaming a chat answer from ranked nodes, failing over mid-answer.

A node that refuses, times out or errors before its first token is skipped with
nothing charged. A node that dies mid-stream is replaced: the next node gets
the original messages plus the text already streamed as a partial assistant
message (``continue_final_message``), so the client sees one uninterrupted
answer. Every node that produced tokens gets a spend-log row; failing nodes are
banned for a growing time.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from agoranet.api.sse import iter_sse_data
from agoranet.errors import RequestError, UpstreamError
from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.ranking import Candidate, expected_cost
from agoranet.gateway.spendlog import SpendLog, SpendRow

__all__ = ["Piece", "RelayResult", "new_request_id", "relay"]


class _NodeFailed(Exception):
    pass


class _ClientFault(RequestError):
    """The node refused the request itself (4xx): every node would, so tell the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status


@dataclass
class Piece:
    """Text for the client; ``node`` says who produced it."""

    text: str
    node: str
    logprobs: dict[str, Any] | None = None


@dataclass
class RelayResult:
    request_id: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    amount: int = 0
    nodes: list[str] = field(default_factory=list)
    failovers: int = 0


@dataclass
class _Segment:
    node: NodeState
    started: float
    first_token: float | None = None
    tokens: int = 0
    usage: dict[str, int] | None = None
    finish: str | None = None


def _continuation(body: dict[str, Any], produced: str, tokens_done: int) -> dict[str, Any]:
    """The request for the next node: the answer so far as a partial assistant message."""
    if not produced:
        return body
    messages = list(body["messages"])
    if body.get("continue_final_message") and messages and messages[-1]["role"] == "assistant":
        messages[-1] = {**messages[-1], "content": str(messages[-1].get("content") or "") + produced}
    else:
        messages.append({"role": "assistant", "content": produced})
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    follow = {**body, "messages": messages, "continue_final_message": True,
              "add_generation_prompt": False}
    if limit is not None:
        follow.pop("max_completion_tokens", None)
        follow["max_tokens"] = max(1, int(limit) - tokens_done)
    return follow


async def _segment_events(client: httpx.AsyncClient, segment: _Segment, body: dict[str, Any],
                          policy: Policy) -> AsyncIterator[Piece]:
    url = f"{segment.node.url}/chat/completions"
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            message = _error_message(response)
            if response.status_code in (400, 413, 422):
                raise _ClientFault(response.status_code, message)
            raise _NodeFailed(f"HTTP {response.status_code}: {message}")
        lines = iter_sse_data(response)
        while True:
            try:
                if segment.first_token is None:
                    with anyio.fail_after(policy.first_token_timeout_s):
                        data = await anext(lines)
                else:
                    data = await anext(lines)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                raise _NodeFailed("no first token in time") from exc
            chunk = json.loads(data)
            if "error" in chunk:
                raise _NodeFailed(f"error mid-stream: {chunk['error'].get('message')}")
            segment.usage = chunk.get("usage") or segment.usage
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    segment.first_token = segment.first_token or time.perf_counter()
                    segment.tokens += 1
                    yield Piece(text, segment.node.url, choice.get("logprobs"))
                segment.finish = choice.get("finish_reason") or segment.finish
    if segment.finish is None:
        raise _NodeFailed("stream ended before the answer did")


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


async def relay(
    client: httpx.AsyncClient,
    candidates: list[Candidate],
    body: dict[str, Any],
    prompt_ceiling: int,
    limit: int,
    policy: Policy,
    budget: Budget,
    spend: SpendLog,
    result: RelayResult,
) -> AsyncGenerator[Piece, None]:
    """Yield the answer's pieces from the best node, failing over; fill ``result``."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    body.pop("agoranet", None)
    produced = ""
    errors: list[str] = []
    for node, model in candidates[: policy.max_attempts]:
        request = _continuation(body, produced, result.completion_tokens)
        worst = expected_cost(model, prompt_ceiling + len(produced.encode()) + 8,
                              limit - result.completion_tokens)
        await budget.reserve(worst)
        segment = _Segment(node, time.perf_counter())
        failed: str | None = None
        try:
            async for piece in _segment_events(client, segment, request, policy):
                produced += piece.text
                yield piece
        except (_NodeFailed, httpx.HTTPError, json.JSONDecodeError) as exc:
            failed = f"{type(exc).__name__}: {exc}"
        finally:
            usage = segment.usage or {}
            prompt = int(usage.get("prompt_tokens", prompt_ceiling if segment.tokens else 0))
            completion = int(usage.get("completion_tokens", segment.tokens))
            amount = min(worst, expected_cost(model, prompt, completion)) if (
                segment.tokens or usage) else 0
            await budget.settle(worst, amount)
            if segment.tokens or usage:
                outcome = "ok" if failed is None else "partial"
                spend.add(SpendRow(result.request_id, str(body["model"]), node.url, prompt,
                                   completion, amount, _ms(segment.first_token, segment.started),
                                   (time.perf_counter() - segment.started) * 1000, outcome))
                result.nodes.append(node.url)
                result.amount += amount
                result.completion_tokens += completion
                result.prompt_tokens = result.prompt_tokens or prompt
        if failed is None:
            node.record_success(_ms(segment.first_token, segment.started) or 0.0, segment.tokens,
                                time.perf_counter() - (segment.first_token or segment.started))
            result.finish_reason = segment.finish or "stop"
            return
        node.record_failure(failed, policy.ban_base_s, policy.ban_cap_s)
        errors.append(f"{node.url}: {failed}")
        result.failovers += 1
    raise UpstreamError("no node could answer: " + ("; ".join(errors) or "none available"),
                        status_code=503)


def _ms(moment: float | None, start: float) -> float | None:
    return None if moment is None else (moment - start) * 1000


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
