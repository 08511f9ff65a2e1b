"""The ``llamacpp`` engine: GGUF files through llama-cpp-python (the ``llamacpp`` extra).

The chat template is the one stored in the GGUF file, rendered here so the
node counts prompt tokens before generating. llama.cpp's model object is not
re-entrant, so generations run one at a time on the scheduler's worker thread
(``max_active`` is forced to 1); waiting requests queue fairly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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
)
from agoranet.engines.registry import register_engine
from agoranet.engines.scheduler import StepScheduler
from agoranet.engines.structured import output_mode
from agoranet.engines.weights import hash_weights, weights_id
from agoranet.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError

__all__ = ["LlamaCppEngine"]


def _render(llm: Any, request: GenerationRequest) -> str:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise InvalidRequestError("this GGUF has no chat template; use /v1/completions")
    messages = [{"role": m.role, "content": m.content} for m in request.messages or ()]
    vocab = llm._model
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=vocab.token_get_text(llm.token_eos()),
        bos_token=vocab.token_get_text(llm.token_bos()),
        add_generation_prompt=request.add_generation_prompt,
    )
    prompt = str(formatter(messages=messages).prompt)
    if request.continue_final_message and messages:
        last = str(messages[-1]["content"])
        cut = prompt.rfind(last)
        if cut >= 0:
            prompt = prompt[: cut + len(last)]
    return prompt


class _GGUFJob:
    """Pulls one streamed chunk per step from llama.cpp's completion generator."""

    def __init__(self, llm: Any, prepared: Prepared) -> None:
        request = prepared.request
        self._prompt_tokens = prepared.prompt_tokens
        self._chunks: Iterator[dict[str, Any]] = llm.create_completion(
            prompt=prepared.payload,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stop=list(request.stop) or None,
            logprobs=request.top_logprobs if request.logprobs else None,
            stream=True,
        )
        self._generated = 0

    def step(self) -> list[StreamEvent]:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            return [Finish("stop", self._prompt_tokens, self._generated)]
        choice = chunk["choices"][0]
        self._generated += 1
        tokens: tuple[TokenLogprob, ...] = ()
        logprobs = choice.get("logprobs")
        if logprobs and logprobs.get("tokens"):
            tops = logprobs.get("top_logprobs") or [{}]
            tokens = tuple(
                TokenLogprob(t, float(lp), t.encode(),
                             tuple((k, float(v), k.encode()) for k, v in (tops[i] or {}).items()))
                for i, (t, lp) in enumerate(zip(logprobs["tokens"], logprobs["token_logprobs"],
                                                strict=False))
            )
        events: list[StreamEvent] = [Delta(choice.get("text") or "", tokens)]
        if choice.get("finish_reason"):
            reason: FinishReason = "length" if choice["finish_reason"] == "length" else "stop"
            events.append(Finish(reason, self._prompt_tokens, self._generated))
        return events


@register_engine("llamacpp")
class LlamaCppEngine:
    """Serves one GGUF file with llama-cpp-python."""

    name = "llamacpp"

    def __init__(
        self,
        model: str | None = None,
        *,
        served_model_name: str | None = None,
        context_length: int = 4096,
        gpu_layers: int = -1,
        max_queue: int = 64,
        **_: Any,
    ) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ModelLoadError(
                "the llamacpp engine needs the 'llamacpp' extra: pip install 'agoranet[llamacpp]'"
            ) from exc
        path = Path(model or "").expanduser()
        if path.suffix != ".gguf" or not path.is_file():
            raise ModelLoadError(f"--model must be a .gguf file, got {model!r}")
        try:
            self._llm = Llama(model_path=str(path), n_ctx=context_length, n_gpu_layers=gpu_layers,
                              logits_all=True, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load {path}: {exc}") from exc
        hashes = hash_weights([path])
        self._info = ModelInfo(
            name=served_model_name or path.stem,
            context_length=int(self._llm.n_ctx()),
            weights_sha256=hashes,
            model_sha256=weights_id(hashes),
            capabilities=frozenset({capabilities.LOGPROBS}),  # no tools or JSON yet
        )
        self._scheduler = StepScheduler(max_active=1, max_queue=max_queue, name="llamacpp")

    def models(self) -> list[ModelInfo]:
        return [self._info]

    def _tokens(self, request: GenerationRequest) -> list[int]:
        if request.model != self._info.name:
            raise ModelNotFoundError(f"The model '{request.model}' does not exist", param="model")
        text = _render(self._llm, request) if request.messages is not None else request.prompt
        ids = self._llm.tokenize((text or "").encode(), add_bos=True, special=True)
        return [int(i) for i in ids]

    async def prepare(self, request: GenerationRequest) -> Prepared:
        if request.tools or output_mode(request) is not None:
            raise InvalidRequestError(
                "the llamacpp engine does not support tools or a JSON response_format yet",
                param="tools" if request.tools else "response_format")
        ids = await asyncio.to_thread(self._tokens, request)
        return Prepared(request, len(ids), self._info.context_length, ids)

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        return self._scheduler.run(_GGUFJob(self._llm, prepared))

    def stats(self) -> dict[str, int]:
        return self._scheduler.stats()

    async def aclose(self) -> None:
        await asyncio.to_thread(self._scheduler.close)
