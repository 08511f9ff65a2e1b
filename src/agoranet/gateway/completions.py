"""``POST /v1/completions`` through the gateway: OpenAI's text completions over the network.

Served like a chat completion (:meth:`agoranet.gateway.service.GatewayService.chat`): the
request is checked (:mod:`agoranet.gateway.completions_wire`), the nodes serving its model
are ranked, the answer is relayed from the best with failover mid-answer, paid and
budgeted (under the caller's key), and every node that produced tokens gets a spend-log
row. The answer is a ``text_completion`` (or its event stream) with the gateway's
``agoranet`` summary; the nodes' logprobs are passed on, each node's ``text_offset``
moved to where its text starts in the whole answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from agoranet.api.sse import DONE, sse_json
from agoranet.errors import UpstreamError
from agoranet.gateway.answer_fields import summary_of, usage_of
from agoranet.gateway.completions_wire import COMPLETIONS, CompletionPlan, plan_completion
from agoranet.gateway.keyaccess import KeyAccess
from agoranet.gateway.relay import Piece, Relay, RelayResult
from agoranet.gateway.service import GatewayService, first_piece

__all__ = ["complete", "new_completion_id"]

_CHARS_PER_TOKEN = 4


def new_completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


async def complete(service: GatewayService, body: dict[str, Any],
                   access: KeyAccess | None = None
                   ) -> tuple[dict[str, Any] | AsyncIterator[bytes], RelayResult]:
    """Serve a text completion request; with ``access`` (a gateway key) within that key's
    models, policy and budget chain."""
    plan = plan_completion(body)
    if access is not None:
        access.check_model(plan.model)
    policy = (access.narrow(service.policy) if access else service.policy).narrowed(
        body.get("agoranet"))
    # As for a chat: bytes bound the prompt's tokens from above (the budget reserves with
    # that); ranking uses a typical 4 characters per token.
    estimate = len(plan.prompt) // _CHARS_PER_TOKEN + 8
    ceiling = len(plan.prompt.encode()) + 16
    candidates, limit = service.candidates(plan.model, estimate, plan.max_tokens, policy,
                                           plan.needs)
    # Explicit (OpenAI's default of 16 if unset), as a continuation takes off it; an
    # explicit null lets each node fill its own context, as a chat without a limit does.
    request = {**plan.body, "max_tokens": plan.max_tokens}
    relay = Relay(service.client, candidates, request, ceiling, limit, policy, service.spend,
                  service.payers, request_id=new_completion_id(), wire=COMPLETIONS)
    result = relay.result
    pieces = relay.pieces(service.reserver(result, plan.model, access))
    first = await first_piece(pieces)
    if plan.stream:
        return _frames(service, plan, first, pieces, result), result
    answer = [first] if first else []
    answer += [p async for p in pieces]
    service.served(plan.model, result)
    return _completion(plan, answer, result), result


class _Offsets:
    """Moves each node's ``text_offset`` to where its text starts in the whole answer
    (a node that continues an answer counts from the start of its own text)."""

    def __init__(self, start: int) -> None:
        self.length = start  # the answer's text so far
        self.base = start
        self.node: str | None = None

    def logprobs(self, piece: Piece) -> dict[str, Any] | None:
        if piece.node != self.node:
            self.node, self.base = piece.node, self.length
        self.length += len(piece.text)
        if piece.logprobs is None:
            return None
        return {**piece.logprobs, "text_offset": [
            self.base + offset for offset in piece.logprobs.get("text_offset", [])]}


def _completion(plan: CompletionPlan, answer: list[Piece], result: RelayResult
                ) -> dict[str, Any]:
    head = plan.prompt if plan.echo else ""
    offsets = _Offsets(len(head))
    moved = [offsets.logprobs(p) for p in answer]
    logprobs: dict[str, Any] | None = None
    if any(m is not None for m in moved):
        logprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for entry in moved:
            for name, values in logprobs.items():
                values.extend((entry or {}).get(name, []))
    choice = {"index": 0, "text": head + "".join(p.text for p in answer),
              "logprobs": logprobs, "finish_reason": result.finish_reason}
    return {"id": result.request_id, "object": "text_completion", "created": int(time.time()),
            "model": plan.model, "choices": [choice], "usage": usage_of(result),
            "agoranet": summary_of(result)}


async def _frames(service: GatewayService, plan: CompletionPlan, first: Piece | None,
                  pieces: AsyncGenerator[Piece, None], result: RelayResult
                  ) -> AsyncIterator[bytes]:
    created = int(time.time())
    offsets = _Offsets(len(plan.prompt) if plan.echo else 0)

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_json({"id": result.request_id, "object": "text_completion",
                         "created": created, "model": plan.model, "choices": choices, **extra})

    def chunk(text: str, logprobs: dict[str, Any] | None = None,
              finish: str | None = None) -> bytes:
        return event([{"index": 0, "text": text, "logprobs": logprobs,
                       "finish_reason": finish}])

    try:
        if plan.echo:
            yield chunk(plan.prompt)
        if first is not None:
            yield chunk(first.text, offsets.logprobs(first))
        async for piece in pieces:
            yield chunk(piece.text, offsets.logprobs(piece))
        yield chunk("", finish=result.finish_reason)
        service.served(plan.model, result)
        if plan.include_usage or result.commitments:  # commitments come even unasked-for usage
            usage = {"usage": usage_of(result)} if plan.include_usage else {}
            yield event([], **usage, agoranet=summary_of(result))
        yield DONE
    except UpstreamError as exc:  # every node failed mid-answer: say so in the stream
        yield sse_json({"error": {"message": str(exc), "type": "upstream_error",
                                  "param": None, "code": "no_node_available"}})
    finally:
        await pieces.aclose()
