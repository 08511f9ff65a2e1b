"""Streaming a chat answer from ranked nodes, failing over mid-answer.

A node that refuses, times out or errors before its first token is skipped with
nothing charged. A node that dies mid-stream is replaced: the next node gets
the original messages plus the text already streamed as a partial assistant
message (``continue_final_message``), so the client sees one uninterrupted
answer. Every node that produced tokens gets a spend-log row, with the signed
receipt behind its charge when it is paid (for a node that died mid-answer, the
last running receipt it sent); failing nodes are banned for a growing time.
With ``policy.commitments`` every node is asked for TOPLOC-style commitments to
its part of the answer (for a continuation, its prompt includes the text already
streamed), and they are collected per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from agoranet.api.sse import iter_sse_data
from agoranet.errors import AgoranetError, PaymentError, RequestError, UpstreamError
from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.policy import Policy
from agoranet.gateway.ranking import Candidate, expected_cost, is_adapter
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.payments.receipts import Receipt
from agoranet.registry.offer import ModelOffer

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
    # With ``policy.commitments``: each node's commitments for its part of the answer.
    commitments: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Segment:
    node: NodeState
    started: float
    first_token: float | None = None
    tokens: int = 0
    usage: dict[str, int] | None = None
    finish: str | None = None
    charged: int | None = None  # from the node's signed receipt, when paid
    receipt: Receipt | None = None
    commitments: dict[str, Any] | None = None  # when asked for
    paid: bool = False  # paid through a channel: only a receipt says what was spent


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
                          policy: Policy, auth: httpx.Auth | None,
                          max_amount: int) -> AsyncGenerator[Piece, None]:
    url = f"{segment.node.url}/chat/completions"
    response: httpx.Response | None = None
    try:
        async with client.stream("POST", url, json=body, auth=auth or httpx.USE_CLIENT_DEFAULT,
                                 extensions={"agoranet_max_amount": max_amount}) as response:
            if response.status_code != 200:
                await response.aread()
                message = _error_message(response)
                if response.status_code in (400, 413, 422):
                    raise _ClientFault(response.status_code, message)
                raise _NodeFailed(f"HTTP {response.status_code}: {message}")
            async for piece in _pieces(segment, iter_sse_data(response), policy):
                yield piece
    finally:
        # Set by the payer once the stream is over: the final receipt, or the last
        # running one if the stream broke off (the node is owed what it receipted).
        if response is not None:
            segment.receipt = response.extensions.get("agoranet_receipt")
            if segment.receipt is not None:
                segment.charged = int(segment.receipt.amount)
    if auth is not None and segment.receipt is None:
        raise _NodeFailed("a paid answer came without a receipt")
    if segment.finish is None:
        raise _NodeFailed("stream ended before the answer did")


async def _pieces(segment: _Segment, lines: AsyncIterator[str],
                  policy: Policy) -> AsyncGenerator[Piece, None]:
    while True:
        try:
            if segment.first_token is None:
                with anyio.fail_after(policy.first_token_timeout_s):
                    data = await anext(lines)
            else:
                data = await anext(lines)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise _NodeFailed("no first token in time") from exc
        chunk = json.loads(data)
        if "error" in chunk:
            raise _NodeFailed(f"error mid-stream: {chunk['error'].get('message')}")
        segment.usage = chunk.get("usage") or segment.usage
        segment.commitments = (chunk.get("agoranet") or {}).get("commitments") or \
            segment.commitments
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                segment.first_token = segment.first_token or time.perf_counter()
                segment.tokens += 1
                yield Piece(text, segment.node.url, choice.get("logprobs"))
            segment.finish = choice.get("finish_reason") or segment.finish


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


@dataclass
class _Attempt:
    """One node asked for (the rest of) the answer, with its budget reservation."""

    node: NodeState
    model: ModelOffer
    worst: int
    segment: _Segment
    events: AsyncGenerator[Piece, None]
    failed: str | None = None
    closed: bool = False


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
    payers: NodePayers | None = None,
) -> AsyncGenerator[Piece, None]:
    """Yield the answer's pieces from the best node, failing over; fill ``result``.

    With ``policy.hedge_after_ms``, a request whose first node has produced no
    token by then is also sent to the next node; the first to answer wins and
    the other is cancelled.
    """
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    body.pop("agoranet", None)
    if policy.commitments:  # the node's own option of the same name
        body["agoranet"] = {"commitments": True}
    adapter = is_adapter(str(body["model"]))
    produced = ""
    errors: list[str] = []
    queue = list(candidates[: policy.max_attempts])

    async def start(candidate: Candidate) -> _Attempt:
        node, model = candidate
        request = _continuation(body, produced, result.completion_tokens)
        worst = expected_cost(model, prompt_ceiling + len(produced.encode()) + 8,
                              limit - result.completion_tokens, adapter=adapter,
                              commitments=policy.commitments)
        await budget.reserve(worst)
        segment = _Segment(node, time.perf_counter())
        try:
            auth = await payers.auth(node) if payers is not None else None
        except AgoranetError as exc:  # no channel to this node: it fails like any node would
            return _Attempt(node, model, worst, segment, _refused(f"cannot pay it: {exc}"))
        segment.paid = auth is not None
        return _Attempt(node, model, worst, segment,
                        _segment_events(client, segment, request, policy, auth, worst))

    async def finish(attempt: _Attempt) -> None:
        """Close the node's stream and account for it, exactly once per attempt."""
        if attempt.closed:
            return
        attempt.closed = True
        await attempt.events.aclose()
        await _account(attempt, body, prompt_ceiling, budget, spend, result)
        if attempt.failed is not None:
            attempt.node.record_failure(attempt.failed, policy.ban_base_s, policy.ban_cap_s)
            errors.append(f"{attempt.node.url}: {attempt.failed}")
            if attempt.segment.finish is None:
                result.failovers += 1

    while queue:
        attempt = await start(queue.pop(0))
        first: Piece | None = None
        try:
            hedge = policy.hedge_after_ms if not produced and queue else None
            attempt, first = await _first_piece(attempt, hedge, queue, start, finish)
            if attempt.failed is not None:
                continue  # the finally below accounts for it
            if first is not None:
                produced += first.text
                yield first
            async for piece in attempt.events:
                produced += piece.text
                yield piece
        except _FAILURES as exc:
            attempt.failed = f"{type(exc).__name__}: {exc}"
        finally:
            await finish(attempt)
        if attempt.failed is not None and attempt.segment.finish is not None:
            # The answer was whole (e.g. a bad receipt came after it): the node is
            # banned, the client keeps its answer.
            result.finish_reason = attempt.segment.finish
            return
        if attempt.failed is None:
            segment = attempt.segment
            attempt.node.record_success(
                _ms(segment.first_token, segment.started) or 0.0, segment.tokens,
                time.perf_counter() - (segment.first_token or segment.started))
            result.finish_reason = segment.finish or "stop"
            return
    raise UpstreamError("no node could answer: " + ("; ".join(errors) or "none available"),
                        status_code=503)


_FAILURES = (_NodeFailed, httpx.HTTPError, json.JSONDecodeError, PaymentError)


async def _first_piece(
    attempt: _Attempt,
    hedge_ms: int | None,
    queue: list[Candidate],
    start: Callable[[Candidate], Awaitable[_Attempt]],
    finish: Callable[[_Attempt], Awaitable[None]],
) -> tuple[_Attempt, Piece | None]:
    """The first piece of ``attempt``, or, when hedging, of whichever node answers first."""
    first_task = asyncio.ensure_future(_next(attempt))
    if hedge_ms is None:
        return attempt, await first_task
    done, _ = await asyncio.wait({first_task}, timeout=hedge_ms / 1000)
    if done:
        return attempt, first_task.result()
    rival = await start(queue.pop(0))
    racing = {first_task: attempt, asyncio.ensure_future(_next(rival)): rival}
    while racing:
        done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            runner = racing.pop(task)
            error = task.exception()
            if error is None or isinstance(error, _ClientFault):
                for loser_task, loser in racing.items():
                    loser_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, *_FAILURES, _ClientFault):
                        await loser_task
                    loser.failed = None  # cancelled, not at fault: accounted, not banned
                    await finish(loser)
                racing.clear()
                if error is not None:
                    await finish(runner)
                    raise error  # the request itself is refused: the caller tells the client
                return runner, task.result()
            runner.failed = f"{type(error).__name__}: {error}"
            if not racing:
                return runner, None  # both failed; the caller accounts for this one
            await finish(runner)
    raise AssertionError("unreachable")


async def _refused(reason: str) -> AsyncGenerator[Piece, None]:
    raise _NodeFailed(reason)
    yield  # pragma: no cover - makes this an async generator


async def _next(attempt: _Attempt) -> Piece | None:
    try:
        return await anext(attempt.events)
    except StopAsyncIteration:
        return None


async def _account(attempt: _Attempt, body: dict[str, Any], prompt_ceiling: int,
                   budget: Budget, spend: SpendLog, result: RelayResult) -> None:
    """Release the reservation, charge what the node produced, log it."""
    segment, model = attempt.segment, attempt.model
    usage = segment.usage or {}
    produced = bool(segment.tokens or usage)
    prompt = int(usage.get("prompt_tokens", prompt_ceiling if segment.tokens else 0))
    completion = int(usage.get("completion_tokens", segment.tokens))
    listed = min(attempt.worst, expected_cost(
        model, prompt, completion, adapter=is_adapter(str(body["model"])),
        commitments=bool(body.get("agoranet")))) if produced else 0
    # A paid node is owed what its receipt says (for a broken answer: its last running
    # receipt), nothing without one; a free node's price list only estimates the value
    # of what it gave.
    unreceipted = 0 if segment.paid else listed
    amount = segment.charged if segment.charged is not None else unreceipted
    await budget.settle(attempt.worst, amount)
    if not produced:
        return
    outcome = "ok" if attempt.failed is None else "partial"
    receipt = json.dumps(segment.receipt.to_json()) if segment.receipt is not None else None
    spend.add(SpendRow(result.request_id, str(body["model"]), attempt.node.url, prompt,
                       completion, amount, _ms(segment.first_token, segment.started),
                       (time.perf_counter() - segment.started) * 1000, outcome, receipt))
    result.nodes.append(attempt.node.url)
    if segment.commitments is not None:
        result.commitments.append({"node": attempt.node.url, **segment.commitments})
    result.amount += amount
    result.completion_tokens += completion
    result.prompt_tokens = result.prompt_tokens or prompt


def _ms(moment: float | None, start: float) -> float | None:
    return None if moment is None else (moment - start) * 1000


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
