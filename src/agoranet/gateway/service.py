"""The gateway's serving logic: validate, rank, relay with failover, shape the answer."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from agoranet.api.sse import DONE, sse_json
from agoranet.api.types import ChatCompletionRequest
from agoranet.engines import capabilities
from agoranet.errors import (
    CapabilityNotOfferedError,
    ModelNotFoundError,
    PriceCapError,
    UpstreamError,
)
from agoranet.gateway.adapter_listing import adapter_entries
from agoranet.gateway.answer_fields import summary_of, usage_of
from agoranet.gateway.auditing import Auditor
from agoranet.gateway.budget import Budget, Reserver
from agoranet.gateway.capabilities import Needs, needs_of
from agoranet.gateway.directory import NodeDirectory
from agoranet.gateway.keyaccess import KeyAccess
from agoranet.gateway.metrics import track_relay
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.policy import Policy
from agoranet.gateway.ranking import Candidate, rank
from agoranet.gateway.relay import Piece, Relay, RelayResult
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.tool_buying import ToolMarket
from agoranet.gateway.toolcalls import join_call_deltas

__all__ = ["GatewayService", "first_piece"]

_CHARS_PER_TOKEN = 4
_TOOLS_PREAMBLE_BYTES = 1024  # a chat template's words around tools, at most (bytes)


async def first_piece(pieces: AsyncGenerator[Piece, None]) -> Piece | None:
    """The first piece of an answer (None if it has none): the relay has found a node that
    answers. If that fails the relay is closed (its reservation released) before the
    error goes on."""
    try:
        return await anext(pieces)
    except StopAsyncIteration:
        return None
    except BaseException:
        await pieces.aclose()
        raise


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
        self.tools: ToolMarket | None = None  # paid tools (agoranet.gateway.tool_buying)

    async def aclose(self) -> None:
        """Stop and close what the service owns: the directory's refresh, the auditor, the
        node payers (after their top-ups under way), the HTTP client, the spend log and the
        reputation store; each once, the rest even if one fails."""
        stops: list[Callable[[], Awaitable[None]]] = [self.directory.stop]
        if self.tools is not None:
            stops.append(self.tools.directory.stop)
        if self.auditor is not None:
            stops.append(self.auditor.stop)
        if self.payers is not None:  # its top-ups under way end first, then its channels
            stops.append(self.payers.aclose)
        stops.append(self.client.aclose)
        closes: list[Callable[[], None]] = [self.spend.close]
        if self.directory.reputation is not None:
            closes.append(self.directory.reputation.close)
        if self.tools is not None and self.tools.payers is not None:
            closes.append(self.tools.payers.close)
        failure: Exception | None = None
        for stop in stops:
            try:
                await stop()
            except Exception as exc:  # closing the rest matters more; re-raised below
                failure = failure or exc
        for close in closes:
            try:
                close()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

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
        adapters = adapter_entries(self.directory.nodes.values())  # those made public
        return {"object": "list", "data": [seen[k] for k in sorted(seen)] + adapters}

    def ranked(self, model: str, prompt_tokens: int, max_tokens: int,
               policy: Policy | None = None, needs: frozenset[str] = frozenset()
               ) -> list[Candidate]:
        return rank(self.directory.nodes.values(), model, prompt_tokens, max_tokens,
                    policy or self.policy, needs)

    async def chat(self, body: dict[str, Any], access: KeyAccess | None = None
                   ) -> tuple[dict[str, Any] | AsyncIterator[bytes], RelayResult]:
        """Serve a chat request; with ``access`` (a gateway key) within that key's models,
        policy and budget chain."""
        # ``agoranet`` carries the gateway's policy fields, not a node's options.
        request = ChatCompletionRequest.model_validate(
            {k: v for k, v in body.items() if k != "agoranet"})
        needs = needs_of(request)
        if access is not None:
            access.check_model(request.model)
        policy = (access.narrow(self.policy) if access else self.policy).narrowed(
            body.get("agoranet"))
        # A token is at least one byte, so bytes bound the prompt's tokens from above:
        # the budget reserves with that; ranking uses a typical 4 characters per token.
        texts = [m.text() for m in request.messages]
        tooling = _tool_bytes(body)  # tools and schemas are shown to the model too
        estimate = (sum(len(t) for t in texts) + tooling) // _CHARS_PER_TOKEN + 8
        ceiling = sum(len(t.encode()) + 8 for t in texts) + 16 + tooling
        candidates, limit = self.candidates(request.model, estimate,
                                            request.completion_limit(), policy, needs)
        relay = Relay(self.client, candidates, body, ceiling, limit, policy, self.spend,
                      self.payers, constrained=needs.constrained)
        result = relay.result
        pieces = relay.pieces(self.reserver(result, request.model, access))
        first = await first_piece(pieces)
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._frames(request.model, first, pieces, result, include_usage), result
        answer = [first] if first else []
        answer += [p async for p in pieces]
        self._served(request.model, result)
        return self._completion(request.model, answer, result), result

    def candidates(self, model: str, estimate: int, requested: int | None, policy: Policy,
                   needs: Needs) -> tuple[list[Candidate], int]:
        """The nodes to ask for ``model``, best first, and the answer's token limit:
        ``requested``, or else what the largest context leaves after the prompt's
        ``estimate`` (a node may fill its context: that bounds the cost). Raises why none
        can be asked: 404 (not served), 400 (not offered), 402 (price cap) or 503."""
        limit = requested or max(
            [max(1, m.context_length - estimate) for n in self.directory.nodes.values()
             if (m := n.model(model)) is not None] or [self.default_max_tokens])
        candidates = self.ranked(model, estimate, limit, policy, needs.capabilities)
        if not candidates:
            if not any(n.model(model) for n in self.directory.nodes.values()):
                raise ModelNotFoundError(f"no node on the network serves '{model}'",
                                         param="model")
            self._check_capabilities(model, needs)
            self._check_price_cap(model, estimate, limit, policy, needs.capabilities)
            raise UpstreamError(f"no node serving '{model}' is allowed by the policy "
                                "or healthy right now", status_code=503)
        return candidates, limit

    def reserver(self, result: RelayResult, model: str, access: KeyAccess | None) -> Reserver:
        """What the request ``result`` reserves its spend from: the gateway's budget, or
        with ``access`` its key's chain (and the gateway's budget). The request being
        observed (metrics, its log line) learns of ``result`` here."""
        track_relay(result, model)
        if access is None:
            return self.budget
        result.key = access.name
        return access.budget(self.budget, result.request_id, model)

    def served(self, model: str, result: RelayResult) -> None:
        """After an answer: perhaps audit the nodes that produced it."""
        self._served(model, result)

    def _check_capabilities(self, model: str, needs: Needs) -> None:
        """Raise a 400 if no node serving ``model`` offers what the request needs (whatever
        their health or the policy: the buyer's need, not a node's fault)."""
        offered = [m for n in self.directory.nodes.values() if (m := n.model(model)) is not None]
        for capability in sorted(needs.capabilities):
            if not any(m.offers({capability}) for m in offered):
                raise CapabilityNotOfferedError(
                    f"no node serving '{model}' offers {_WHAT[capability]}"
                    f"{_HINTS.get(capability, '')}", param=needs.param(capability))
        if not any(m.offers(needs.capabilities) for m in offered):
            raise CapabilityNotOfferedError(
                f"no node serving '{model}' offers all of "
                f"{', '.join(_WHAT[c] for c in sorted(needs.capabilities))} together",
                param=needs.param(min(needs.capabilities)))

    def _check_price_cap(self, model: str, prompt_tokens: int, max_tokens: int,
                         policy: Policy, needs: frozenset[str] = frozenset()) -> None:
        """Raise a 402 naming the cheapest offer if the price caps alone exclude every node."""
        if policy.max_price_in is None and policy.max_price_out is None:
            return
        uncapped = self.ranked(model, prompt_tokens, max_tokens, policy.model_copy(
            update={"max_price_in": None, "max_price_out": None, "prefer": "cheapest"}), needs)
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

    def _completion(self, model: str, answer: list[Piece], result: RelayResult
                    ) -> dict[str, Any]:
        text = "".join(p.text for p in answer)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        calls = join_call_deltas(d for p in answer for d in p.tool_calls or ())
        if calls:  # OpenAI's shape of a call: the calls, content only if there was some
            message = {"role": "assistant", "content": text or None, "tool_calls": calls}
        choice: dict[str, Any] = {"index": 0, "message": message,
                                  "finish_reason": result.finish_reason}
        if any(p.logprobs is not None for p in answer):  # the nodes', token by token
            choice["logprobs"] = {"content": [entry for p in answer
                                              for entry in (p.logprobs or {}).get("content")
                                              or []]}
        return {
            "id": result.request_id, "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage_of(result), "agoranet": summary_of(result),
        }

    async def _frames(self, model: str, first: Piece | None, pieces: AsyncGenerator[Piece, None],
                      result: RelayResult, include_usage: bool) -> AsyncIterator[bytes]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None,
                  logprobs: dict[str, Any] | None = None, **extra: Any) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            if logprobs is not None:  # the node's, for this piece's tokens
                choice["logprobs"] = logprobs
            return sse_json({"id": result.request_id, "object": "chat.completion.chunk",
                             "created": created, "model": model, "choices": [choice], **extra})

        try:
            yield chunk({"role": "assistant", "content": ""})
            if first is not None:
                yield chunk(_delta(first), logprobs=first.logprobs)
            async for piece in pieces:
                yield chunk(_delta(piece), logprobs=piece.logprobs)
            yield chunk({}, result.finish_reason)
            self._served(model, result)
            if include_usage or result.commitments:  # commitments come even unasked-for usage
                usage = {"usage": usage_of(result)} if include_usage else {}
                yield sse_json({"id": result.request_id, "object": "chat.completion.chunk",
                                "created": created, "model": model, "choices": [], **usage,
                                "agoranet": summary_of(result)})
            yield DONE
        except UpstreamError as exc:  # every node failed mid-answer: say so in the stream
            yield sse_json({"error": {"message": str(exc), "type": "upstream_error",
                                      "param": None, "code": "no_node_available"}})
        finally:
            await pieces.aclose()


def _delta(piece: Piece) -> dict[str, Any]:
    """A piece as a chunk's delta: its text, or the node's tool-call deltas unchanged."""
    if piece.tool_calls:
        return {"content": piece.text or None, "tool_calls": piece.tool_calls}
    return {"content": piece.text}


def _tool_bytes(body: dict[str, Any]) -> int:
    """Bytes of the request's tools, calls and JSON schema: a node's chat template shows
    them to the model, so they count towards the prompt's bound, with room for the
    template's own words about tools (0 for a request without any)."""
    calls = [m.get("tool_calls") for m in body["messages"] if m.get("tool_calls")]
    if not body.get("tools") and not body.get("response_format") and not calls:
        return 0
    shown = json.dumps([body.get("tools"), body.get("response_format"), calls])
    return len(shown.encode()) + _TOOLS_PREAMBLE_BYTES


_WHAT = {capabilities.TOOLS: "tool calls", capabilities.TOOL_CHOICE_AUTO: "tool_choice 'auto'",
         capabilities.STRUCTURED_OUTPUT: "a JSON response_format", capabilities.LOGPROBS:
         "logprobs", capabilities.EMBEDDINGS: "embeddings"}
_HINTS = {capabilities.TOOL_CHOICE_AUTO: ": ask for tool_choice 'required' or a named function "
          "instead (the call is then generated under its schema)"}
