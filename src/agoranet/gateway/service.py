"""The gateway's serving logic: validate, rank, relay with failover, shape the answer."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from agoranet.api.sse import DONE, sse_json
from agoranet.api.types import ChatCompletionRequest
from agoranet.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    PriceCapError,
    UpstreamError,
)
from agoranet.gateway.auditing import Auditor
from agoranet.gateway.budget import Budget, Reserver
from agoranet.gateway.directory import NodeDirectory
from agoranet.gateway.keyaccess import KeyAccess
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.policy import Policy
from agoranet.gateway.ranking import Candidate, rank
from agoranet.gateway.relay import Piece, RelayResult, new_request_id, relay
from agoranet.gateway.spendlog import SpendLog

__all__ = ["GatewayService"]

_CHARS_PER_TOKEN = 4


class GatewayService:
    def __init__(self, directory: NodeDirectory, policy: Policy, budget: Budget,
                 spend: SpendLog, client: httpx.AsyncClient, default_max_tokens: int,
                 payers: NodePayers | None = None, auditor: Auditor | None = None) -> None:
        self.directory = directory
        self.policy = policy
        self.budget = budget
        self.spend = spend
        self.client = client
        self.default_max_tokens = default_max_tokens
        self.payers = payers
        self.auditor = auditor

    def model_list(self) -> dict[str, Any]:
        """Every model on the network, with its cheapest price and how many nodes serve it."""
        seen: dict[str, dict[str, Any]] = {}
        for node in self.directory.nodes.values():
            for model in node.offer.models if node.offer else []:
                price = {"input_per_million": model.price.input_per_million,
                         "output_per_million": model.price.output_per_million}
                entry = seen.setdefault(model.id, {
                    "id": model.id, "object": "model", "created": 0, "owned_by": "agoranet",
                    "max_model_len": model.context_length,
                    "agoranet": {"nodes": 0, "cheapest_price": price},
                })
                entry["agoranet"]["nodes"] += 1
                cheapest = entry["agoranet"]["cheapest_price"]
                if sum(price.values()) < sum(cheapest.values()):
                    entry["agoranet"]["cheapest_price"] = price
        return {"object": "list", "data": [seen[k] for k in sorted(seen)]}

    def ranked(self, model: str, prompt_tokens: int, max_tokens: int,
               policy: Policy | None = None) -> list[Candidate]:
        return rank(self.directory.nodes.values(), model, prompt_tokens, max_tokens,
                    policy or self.policy)

    async def chat(self, body: dict[str, Any], access: KeyAccess | None = None
                   ) -> tuple[dict[str, Any] | AsyncIterator[bytes], RelayResult]:
        """Serve a chat request; with ``access`` (a gateway key) within that key's models,
        policy and budget chain."""
        # ``agoranet`` carries the gateway's policy fields, not a node's options.
        request = ChatCompletionRequest.model_validate(
            {k: v for k, v in body.items() if k != "agoranet"})
        if request.tools:  # the relay carries text only: a call would be lost on the way
            raise InvalidRequestError("the gateway does not relay tool calls yet; send requests "
                                      "with tools to a node directly", param="tools")
        if access is not None:
            access.check_model(request.model)
        policy = (access.narrow(self.policy) if access else self.policy).narrowed(
            body.get("agoranet"))
        # A token is at least one byte, so bytes bound the prompt's tokens from above:
        # the budget reserves with that; ranking uses a typical 4 characters per token.
        texts = [m.text() for m in request.messages]
        estimate = sum(len(t) for t in texts) // _CHARS_PER_TOKEN + 8
        ceiling = sum(len(t.encode()) + 8 for t in texts) + 16
        # Without max_tokens a node may fill its context: that bounds the cost.
        limit = request.completion_limit() or max(
            [max(1, m.context_length - estimate) for n in self.directory.nodes.values()
             if (m := n.model(request.model)) is not None] or [self.default_max_tokens])
        candidates = self.ranked(request.model, estimate, limit, policy)
        if not candidates:
            if not any(n.model(request.model) for n in self.directory.nodes.values()):
                raise ModelNotFoundError(f"no node on the network serves '{request.model}'",
                                         param="model")
            self._check_price_cap(request.model, estimate, limit, policy)
            raise UpstreamError(f"no node serving '{request.model}' is allowed by the policy "
                                "or healthy right now", status_code=503)
        result = RelayResult(new_request_id())
        budget: Reserver = self.budget
        if access is not None:
            result.key = access.name
            budget = access.budget(self.budget, result.request_id, request.model)
        pieces = relay(self.client, candidates, body, ceiling, limit, policy, budget,
                       self.spend, result, self.payers)
        try:
            first = await anext(pieces)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await pieces.aclose()
            raise
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._frames(request.model, first, pieces, result, include_usage), result
        text = [first.text] if first else []
        text += [p.text async for p in pieces]
        self._served(request.model, result)
        return self._completion(request.model, "".join(text), result), result

    def _check_price_cap(self, model: str, prompt_tokens: int, max_tokens: int,
                         policy: Policy) -> None:
        """Raise a 402 naming the cheapest offer if the price caps alone exclude every node."""
        if policy.max_price_in is None and policy.max_price_out is None:
            return
        uncapped = self.ranked(model, prompt_tokens, max_tokens, policy.model_copy(
            update={"max_price_in": None, "max_price_out": None, "prefer": "cheapest"}))
        if not uncapped:
            return
        node, offer = min(uncapped, key=lambda c: (c[1].price.output_per_million,
                                                   c[1].price.input_per_million))
        caps = ", ".join(f"{name}={value}" for name, value in (
            ("max_price_in", policy.max_price_in), ("max_price_out", policy.max_price_out))
            if value is not None)
        raise PriceCapError(
            f"no node serving '{model}' is within the price cap ({caps}, base units per "
            f"million tokens); the cheapest offer is {offer.price.input_per_million} in / "
            f"{offer.price.output_per_million} out ({node.url}): raise the cap (the request's "
            "'agoranet' field or the gateway's policy) to use it")

    def _served(self, model: str, result: RelayResult) -> None:
        """After an answer: perhaps audit the nodes that produced it."""
        if self.auditor is None:
            return
        for url in result.nodes:
            node = self.directory.nodes.get(url)
            if node is not None:
                self.auditor.after_request(node, model)

    def _completion(self, model: str, text: str, result: RelayResult) -> dict[str, Any]:
        return {
            "id": result.request_id, "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": result.finish_reason}],
            "usage": _usage(result), "agoranet": _summary(result),
        }

    async def _frames(self, model: str, first: Piece | None, pieces: AsyncGenerator[Piece, None],
                      result: RelayResult, include_usage: bool) -> AsyncIterator[bytes]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            return sse_json({"id": result.request_id, "object": "chat.completion.chunk",
                             "created": created, "model": model, "choices": [choice], **extra})

        try:
            yield chunk({"role": "assistant", "content": ""})
            if first is not None:
                yield chunk({"content": first.text})
            async for piece in pieces:
                yield chunk({"content": piece.text})
            yield chunk({}, result.finish_reason)
            self._served(model, result)
            if include_usage or result.commitments:  # commitments come even unasked-for usage
                usage = {"usage": _usage(result)} if include_usage else {}
                yield sse_json({"id": result.request_id, "object": "chat.completion.chunk",
                                "created": created, "model": model, "choices": [], **usage,
                                "agoranet": _summary(result)})
            yield DONE
        except UpstreamError as exc:  # every node failed mid-answer: say so in the stream
            yield sse_json({"error": {"message": str(exc), "type": "upstream_error",
                                      "param": None, "code": "no_node_available"}})
        finally:
            await pieces.aclose()


def _usage(result: RelayResult) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _summary(result: RelayResult) -> dict[str, Any]:
    summary = {"request_id": result.request_id, "nodes": result.nodes, "amount": result.amount,
               "failovers": result.failovers}
    if result.commitments:
        summary["commitments"] = result.commitments
    return summary
