"""The ``upstream`` engine: forward to any OpenAI-compatible server.

This is how a provider with its own cluster (vLLM, SGLang, Ollama, llama.cpp
server, or another agoranet node) joins the network: the node keeps payment,
metering and the offer, the upstream does the generation. Prompt tokens are
counted with the upstream's ``/tokenize`` endpoint (vLLM and agoranet nodes
have it); without one, usage reported by the upstream is used after the fact
and the pre-generation count is an estimate.

Embeddings pass through to the upstream's ``/v1/embeddings``, offered for the models
that answer a one-word embeddings request when the node starts (an embedding model on
vLLM, any model on Ollama, llama.cpp's server started with ``--embeddings``). Their
input tokens are counted beforehand with ``/tokenize`` or, without it, bounded by the
inputs' bytes; the charge is the upstream's usage, never more than that count.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from agoranet.api import jsonlimits
from agoranet.api.lean_transport import LeanTransport
from agoranet.api.sse import iter_sse_data
from agoranet.engines import capabilities
from agoranet.engines.base import (
    Delta,
    Finish,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    Prepared,
    StreamEvent,
    TokenLogprob,
    ToolCallDelta,
)
from agoranet.engines.embeddings import EmbeddingJob, EmbeddingsResult, PreparedEmbeddings
from agoranet.engines.registry import register_engine
from agoranet.errors import InvalidJSONError, ModelLoadError, ModelNotFoundError, UpstreamError

__all__ = ["UpstreamEngine"]

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT = 4096
_CHARS_PER_TOKEN = 4
_SPECIAL_TOKENS_BOUND = 8  # tokens a tokenizer may add to one input (BOS, CLS, SEP, ...)
# Tool and format fields go through unchanged: the upstream server honours or refuses them.
_UPSTREAM_CAPABILITIES = frozenset({capabilities.TOOLS, capabilities.TOOL_CHOICE_AUTO,
                                    capabilities.STRUCTURED_OUTPUT, capabilities.LOGPROBS})


def _error_message(response: httpx.Response) -> str:
    try:
        body = jsonlimits.loads(response.content, what="the error body")
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or response.reason_phrase


def _chat_tokens(logprobs: dict[str, Any] | None) -> tuple[TokenLogprob, ...]:
    if not logprobs:
        return ()
    out = []
    for entry in logprobs.get("content") or []:
        top = tuple(
            (t["token"], float(t["logprob"]), bytes(t.get("bytes") or t["token"].encode()))
            for t in entry.get("top_logprobs") or []
        )
        raw = bytes(entry.get("bytes") or entry["token"].encode())
        ident = entry.get("token_id")
        out.append(TokenLogprob(entry["token"], float(entry["logprob"]), raw, top,
                                int(ident) if ident is not None else None))
    return tuple(out)


def _wire_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in request.messages or ():
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = [dict(c) for c in m.tool_calls]
            message["content"] = m.content or None
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


def _tool_fields(request: GenerationRequest) -> dict[str, Any]:
    """Function calling and structured output, passed to the upstream unchanged."""
    fields: dict[str, Any] = {}
    if request.tools:
        fields["tools"] = [dict(t) for t in request.tools]
    if request.tool_choice is not None:
        fields["tool_choice"] = request.tool_choice
    if request.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    if request.response_format is not None:
        fields["response_format"] = request.response_format
    return fields


def _tool_call_pieces(delta: dict[str, Any]) -> tuple[ToolCallDelta, ...]:
    out = []
    for call in delta.get("tool_calls") or []:
        function = call.get("function") or {}
        out.append(ToolCallDelta(int(call.get("index") or 0), str(function.get("arguments") or ""),
                                 call.get("id"), function.get("name")))
    return tuple(out)


def _completion_tokens(logprobs: dict[str, Any] | None) -> tuple[TokenLogprob, ...]:
    if not logprobs:
        return ()
    tops = logprobs.get("top_logprobs") or []
    out = []
    for i, (token, lp) in enumerate(
        zip(logprobs.get("tokens") or [], logprobs.get("token_logprobs") or [], strict=False)
    ):
        alternatives = tops[i] if i < len(tops) and tops[i] else {}
        top = tuple((t, float(v), t.encode()) for t, v in alternatives.items())
        out.append(TokenLogprob(token, float(lp), token.encode(), top))
    return tuple(out)


@register_engine("upstream")
class UpstreamEngine:
    """Forwards generation to an OpenAI-compatible ``base_url`` (ending in ``/v1``)."""

    name = "upstream"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        model: str | None = None,
        served_model_name: str | None = None,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
        **_: Any,
    ) -> None:
        if not base_url:
            raise ModelLoadError("the upstream engine needs --upstream-url (e.g. http://host:8000/v1)")
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._models = self._discover(headers, model, served_model_name)
        # A plain-HTTP upstream (the usual: vLLM or Ollama beside the node) over
        # LeanTransport: the node added 1.37 ms to a request instead of 2.10 ms on httpx's
        # own transport (bench: instant upstream); https goes to httpx's.
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport or LeanTransport(max_connections=256, keepalive_expiry=4.0),
        )
        self._counters = {"active": 0, "completed": 0, "cancelled": 0, "failed": 0}

    def _discover(
        self, headers: dict[str, str], only: str | None, served: str | None
    ) -> dict[str, tuple[str, ModelInfo]]:
        """Ask the upstream which models it has: ``{served name: (upstream name, info)}``."""
        try:
            response = httpx.get(f"{self.base_url}/models", headers=headers, timeout=10.0)
        except httpx.HTTPError as exc:
            raise ModelLoadError(f"upstream {self.base_url} is unreachable: {exc}") from exc
        if response.status_code != 200:
            raise ModelLoadError(f"upstream {self.base_url}/models: {_error_message(response)}")
        cards = [c for c in response.json().get("data", []) if only in (None, str(c["id"]))]
        if not cards:
            raise ModelLoadError(f"upstream {self.base_url} serves no model named {only!r}")
        if served and len(cards) > 1:
            raise ModelLoadError("--served-model-name needs --model to pick one upstream model")
        found: dict[str, tuple[str, ModelInfo]] = {}
        for card in cards:
            upstream_name = str(card["id"])
            context = int(card.get("max_model_len") or DEFAULT_CONTEXT)
            name = served or upstream_name
            offered = _UPSTREAM_CAPABILITIES
            if self._embeds(headers, upstream_name):
                offered = offered | {capabilities.EMBEDDINGS}
            found[name] = (upstream_name, ModelInfo(name=name, context_length=context,
                                                    capabilities=offered))
        return found

    def _embeds(self, headers: dict[str, str], upstream_name: str) -> bool:
        """Whether the upstream embeds with ``upstream_name`` (one short request)."""
        try:
            response = httpx.post(f"{self.base_url}/embeddings", headers=headers, timeout=10.0,
                                  json={"model": upstream_name, "input": "ping"})
            data = response.json().get("data") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return isinstance(data, list) and len(data) == 1

    async def prepare_embeddings(self, job: EmbeddingJob) -> PreparedEmbeddings:
        upstream_name, info = self._upstream(job.model)
        if capabilities.EMBEDDINGS not in info.capabilities:
            raise UpstreamError(f"the upstream does not embed with '{job.model}'",
                                status_code=400)
        counts = await asyncio.gather(*(self._count_input(upstream_name, item)
                                        for item in job.inputs))
        return PreparedEmbeddings(job, sum(counts), upstream_name)

    async def _count_input(self, upstream_name: str, item: str | Sequence[int]) -> int:
        """The tokens of one input: its ids, the upstream's count, or its bytes (a token
        stands for at least one) plus room for special tokens."""
        if not isinstance(item, str):
            return len(item)
        root = self.base_url.removesuffix("/v1")
        try:
            response = await self._client.post(f"{root}/tokenize", json={
                "model": upstream_name, "prompt": item})
            if response.status_code == 200 and isinstance(response.json().get("count"), int):
                return int(response.json()["count"])
        except (httpx.HTTPError, ValueError, AttributeError):
            pass
        return len(item.encode("utf-8", "surrogatepass")) + _SPECIAL_TOKENS_BOUND

    async def embed(self, prepared: PreparedEmbeddings) -> EmbeddingsResult:
        job = prepared.job
        body: dict[str, Any] = {"model": prepared.payload, "input": [
            item if isinstance(item, str) else list(item) for item in job.inputs],
            "encoding_format": "float"}
        if job.dimensions is not None:
            body["dimensions"] = job.dimensions
        try:
            response = await self._client.post("/embeddings", json=body)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.base_url} failed: {exc}") from exc
        if response.status_code != 200:
            raise UpstreamError(_error_message(response), status_code=response.status_code)
        try:
            answer = jsonlimits.loads_object(response.content, what="the embeddings")
            rows = sorted(answer["data"], key=lambda row: int(row["index"]))
            vectors = [_vector(row["embedding"]) for row in rows]
            usage = answer.get("usage") or {}
            tokens = int(usage.get("prompt_tokens", prepared.prompt_tokens))
        except (InvalidJSONError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"upstream sent malformed embeddings: {exc}") from None
        if len(vectors) != len(job.inputs):
            raise UpstreamError(f"upstream sent {len(vectors)} embeddings for "
                                f"{len(job.inputs)} inputs")
        return EmbeddingsResult(vectors, min(tokens, prepared.prompt_tokens))

    def models(self) -> list[ModelInfo]:
        return [info for _, info in self._models.values()]

    def _upstream(self, name: str) -> tuple[str, ModelInfo]:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFoundError(f"The model '{name}' does not exist", param="model") from None

    async def prepare(self, request: GenerationRequest) -> Prepared:
        upstream_name, info = self._upstream(request.model)
        return Prepared(request, await self._count(upstream_name, request), info.context_length)

    async def _count(self, upstream_name: str, request: GenerationRequest) -> int:
        root = self.base_url.removesuffix("/v1")
        body: dict[str, Any] = {"model": upstream_name}
        if request.messages is not None:
            body["messages"] = _wire_messages(request)
            if request.tools:
                body["tools"] = [dict(t) for t in request.tools]
            body["add_generation_prompt"] = request.add_generation_prompt
            body["continue_final_message"] = request.continue_final_message
        else:
            body["prompt"] = request.prompt
        try:
            response = await self._client.post(f"{root}/tokenize", json=body)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream tokenize failed: {exc}") from exc
        if response.status_code == 200 and "count" in response.json():
            return int(response.json()["count"])
        if 400 <= response.status_code < 500 and response.status_code != 404:
            raise UpstreamError(_error_message(response), status_code=response.status_code)
        text = request.prompt or "".join(m.content for m in request.messages or ())
        text += json.dumps([*request.tools, *(c for m in request.messages or ()
                                               for c in m.tool_calls)]) if request.tools else ""
        return len(text) // _CHARS_PER_TOKEN + 4 * len(request.messages or ()) + 1

    def _body(self, prepared: Prepared) -> tuple[str, dict[str, Any]]:
        request = prepared.request
        upstream_name, _ = self._upstream(request.model)
        body: dict[str, Any] = {
            "model": upstream_name,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.ignore_eos:
            body["ignore_eos"] = True
        if request.stop:
            body["stop"] = list(request.stop)
        if request.messages is not None:
            body["messages"] = _wire_messages(request)
            body.update(_tool_fields(request))
            if request.continue_final_message:
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            if request.logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = request.top_logprobs
            return "/chat/completions", body
        body["prompt"] = request.prompt
        if request.logprobs:
            body["logprobs"] = request.top_logprobs
        return "/completions", body

    async def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        path, body = self._body(prepared)
        chat = path == "/chat/completions"
        finish_reason, usage, produced = "stop", None, 0
        self._counters["active"] += 1
        outcome = "cancelled"
        try:
            async with self._client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise UpstreamError(_error_message(response), status_code=response.status_code)
                async for data in iter_sse_data(response):
                    try:
                        chunk = jsonlimits.loads_object(data, what="an SSE event")
                    except InvalidJSONError as exc:
                        raise UpstreamError(f"upstream sent {exc}") from None
                    if "error" in chunk:
                        raise UpstreamError(str(chunk["error"].get("message", chunk["error"])))
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        text = delta.get("content") if chat else choice.get("text")
                        tokens = (_chat_tokens if chat else _completion_tokens)(choice.get("logprobs"))
                        calls = _tool_call_pieces(delta) if chat else ()
                        if text or tokens or calls:
                            produced += max(len(tokens), 1)
                            yield Delta(text or "", tokens, calls)
                        finish_reason = choice.get("finish_reason") or finish_reason
            prompt_tokens = int(usage["prompt_tokens"]) if usage else prepared.prompt_tokens
            completion_tokens = int(usage["completion_tokens"]) if usage else produced
            reason: FinishReason = ("length" if finish_reason == "length" else
                                    "tool_calls" if finish_reason == "tool_calls" else "stop")
            outcome = "completed"
            yield Finish(reason, prompt_tokens, completion_tokens)
        except httpx.HTTPError as exc:
            outcome = "failed"
            raise UpstreamError(f"upstream {self.base_url} failed: {exc}") from exc
        except UpstreamError:
            outcome = "failed"
            raise
        finally:
            self._counters["active"] -= 1
            self._counters[outcome] += 1

    def stats(self) -> dict[str, int]:
        return dict(self._counters)

    async def aclose(self) -> None:
        await self._client.aclose()


def _vector(value: object) -> list[float]:
    """An upstream's embedding: floats, or base64 of little-endian float32."""
    if isinstance(value, str):
        raw = base64.b64decode(value, validate=True)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if not isinstance(value, list) or not all(isinstance(x, int | float) for x in value):
        raise ValueError("an embedding is not a list of numbers")
    return [float(x) for x in value]

