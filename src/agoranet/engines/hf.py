"""The ``transformers`` engine: a local directory or a Hugging Face Hub model.

Loads weights and tokenizer with ``AutoModelForCausalLM`` / ``AutoTokenizer``,
renders chats with the model's own chat template, and generates token by token,
all active sequences in one forward pass per step (continuous batching,
:mod:`agoranet.engines.batch`; ``batching=False``: one sequence per step on the
:class:`~agoranet.engines.scheduler.StepScheduler`), so every stream yields each
token as soon as it is sampled, with its logprobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from agoranet.engines import capabilities
from agoranet.engines.adapters import AdapterPool, PooledAdapters
from agoranet.engines.base import GenerationRequest, ModelInfo, Prepared, StreamEvent
from agoranet.engines.batch import engine_scheduler
from agoranet.engines.constrained import CallFormat, CompiledOutput, GrammarBook
from agoranet.engines.embeddings import EmbeddingJob, EmbeddingsResult, PreparedEmbeddings
from agoranet.engines.hf_embeddings import HfEmbedder, TransformersEmbeddingEngine
from agoranet.engines.hf_job import DecodeJob
from agoranet.engines.hf_loading import DEFAULT_MODEL, LoadedModel, load_model, resolve_model_dir
from agoranet.engines.pooling import Pooling, is_embedding_model
from agoranet.engines.prompt import encode_prompt, template_renders_tools
from agoranet.engines.registry import register_engine
from agoranet.engines.sampling import call_opener_ids, unoffered_call_tokens
from agoranet.engines.scheduler import StepScheduler
from agoranet.engines.structured import AutoTools, ForcedToolCall, output_mode
from agoranet.engines.toolcall_stream import as_tool_call, parsed_tool_calls
from agoranet.engines.toolparsers import (
    Llama3JsonParser,
    ToolCallParser,
    detect_tool_parser,
    tool_parser,
)
from agoranet.errors import AdapterError, ConfigError, InvalidRequestError, ModelNotFoundError
from agoranet.tuning.adapter import parse_model_name

__all__ = ["LoadedModel", "TransformersEngine", "load_model", "resolve_model_dir",
           "transformers_engine"]

logger = logging.getLogger(__name__)

@register_engine("transformers")
def transformers_engine(model: str | None = None, **options: Any
                        ) -> TransformersEngine | TransformersEmbeddingEngine:
    """The ``transformers`` engine for ``model``: an embedding model (a directory or Hub
    id in the sentence-transformers layout) serves ``/v1/embeddings`` only; any other
    model is a causal LM."""
    if options.get("loaded") is None:
        directory, _ = resolve_model_dir(model or DEFAULT_MODEL)
        if is_embedding_model(directory):
            if options.get("embedding_pooling"):
                raise ConfigError(f"{model} states its own pooling (1_Pooling/config.json): "
                                  "leave out --embedding-pooling")
            _refuse_chat_options(str(model), options)
            return TransformersEmbeddingEngine(model, **options)
    return TransformersEngine(model, **options)


def _refuse_chat_options(model: str, options: dict[str, Any]) -> None:
    """ConfigError naming the generation options set away from their defaults for an
    embedding model (it would ignore them: it serves ``/v1/embeddings`` only)."""
    unused = [flag for flag, is_set in (
        ("--tool-call-parser", options.get("tool_call_parser") is not None),
        ("--no-batching", options.get("batching") is False)) if is_set]
    if unused:
        raise ConfigError(f"{model} is an embedding model: it does not use "
                          f"{', '.join(unused)} (leave it out)")


class TransformersEngine(PooledAdapters):
    """Serves one causal LM through ``transformers`` (and embeds with it, mean- or
    last-token-pooled and normalised, when ``embedding_pooling`` is stated)."""

    name = "transformers"

    def __init__(
        self,
        model: str | None = None,
        *,
        loaded: LoadedModel | None = None,
        served_model_name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_active: int = 8,
        max_queue: int = 64,
        adapters_dir: Path | None = None,
        max_adapters: int = 8,
        tool_call_parser: str | None = None,
        batching: bool = True,
        batch_invariant: bool | None = None,
        prefill_chunk: int = 256,
        batch_threads: int | None = 1,
        embedding_pooling: str | None = None,
        **_: Any,
    ) -> None:
        if embedding_pooling is not None and adapters_dir is not None:
            # An embedding pass would run beside decode steps that switch adapters.
            raise ConfigError("--embedding-pooling cannot be combined with adapters yet: "
                              "start the node with --no-adapters")
        try:
            pooling = Pooling(embedding_pooling, normalize=True) if embedding_pooling else None
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if loaded is None:
            loaded = load_model(model or DEFAULT_MODEL, served_name=served_model_name, device=device, dtype=dtype)
        self.loaded = loaded
        # Embeddings from the decoder's last layer, with the pooling the operator stated.
        self.embedder = HfEmbedder(
            loaded.info.name, loaded.model.get_decoder(), loaded.tokenizer, loaded.device,
            pooling, loaded.info.context_length, max_active + max_queue,
        ) if pooling is not None else None
        self.adapters = (
            AdapterPool(loaded.model, loaded.info.model_sha256, Path(adapters_dir), max_adapters)
            if adapters_dir is not None
            else None
        )
        # Continuous batching (engines.batch), or one sequence per step with batching=False.
        self._scheduler: StepScheduler = engine_scheduler(
            loaded, batching=batching, max_active=max_active, max_queue=max_queue,
            name=f"hf-{loaded.info.name}", invariant=batch_invariant, prefill_chunk=prefill_chunk,
            adapters=self.adapters, threads=batch_threads)
        self._renders_tools = template_renders_tools(loaded.tokenizer)
        # The parser of the model's tool-call format (vLLM's --tool-call-parser): as
        # configured, else the one its chat template teaches, if known.
        parser = tool_call_parser or (detect_tool_parser(loaded.tokenizer.chat_template)
                                      if self._renders_tools else None)
        self.tool_parser: type[ToolCallParser] | None = tool_parser(parser) if parser else None
        # Never sampled for a request that offers no tools (see engines.sampling).
        self._call_openers = call_opener_ids(loaded.tokenizer)
        self._grammars: GrammarBook | None = None  # built on the first constrained request
        self._grammars_lock = threading.Lock()

    @property
    def supports_tool_choice_auto(self) -> bool:
        """Whether ``tool_choice: auto`` is served: the template shows the model its
        tools and a parser reads its calls."""
        return self.tool_parser is not None and self._renders_tools

    def models(self) -> list[ModelInfo]:
        info = self.loaded.info
        if self.supports_tool_choice_auto:  # offered, so gateways route `auto` here
            info = dataclasses.replace(
                info, capabilities=info.capabilities | {capabilities.TOOL_CHOICE_AUTO})
        if self.embedder is not None:
            info = dataclasses.replace(
                info, capabilities=info.capabilities | {capabilities.EMBEDDINGS})
        return [info]

    async def prepare_embeddings(self, job: EmbeddingJob) -> PreparedEmbeddings:
        if self.embedder is None:
            raise InvalidRequestError(
                f"'{self.loaded.info.name}' is served for generation only: this node states "
                "no embedding pooling for it (--embedding-pooling)", param="model")
        return await self.embedder.prepare(job)

    async def embed(self, prepared: PreparedEmbeddings) -> EmbeddingsResult:
        if self.embedder is None:
            raise InvalidRequestError("this node does not embed", param="model")
        return await self.embedder.embed(prepared)

    def _adapter_of(self, request: GenerationRequest) -> str | None:
        """The adapter id named by ``request.model`` (None for the base model)."""
        try:
            base, adapter = parse_model_name(request.model)
        except AdapterError as exc:
            raise InvalidRequestError(str(exc), param="model") from exc
        if base != self.loaded.info.name:
            raise ModelNotFoundError(
                f"The model '{request.model}' does not exist on this node; "
                f"it serves '{self.loaded.info.name}'",
                param="model",
            )
        if adapter is not None:
            if self.adapters is None:
                raise ModelNotFoundError("this node does not serve adapters", param="model")
            self.adapters.get(adapter)
        return adapter

    async def prepare(self, request: GenerationRequest) -> Prepared:
        adapter = self._adapter_of(request)
        compiled = await self._output_grammar(request)
        ids = await asyncio.to_thread(encode_prompt, self.loaded.tokenizer, request)
        return Prepared(request, len(ids), self.loaded.info.context_length,
                        (ids, adapter, compiled))

    def grammar_book(self) -> GrammarBook:
        """The compiled output grammars of this model's tokenizer."""
        with self._grammars_lock:
            if self._grammars is None:
                loaded = self.loaded
                vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
                self._grammars = GrammarBook(loaded.tokenizer, vocab, loaded.eos_ids)
            return self._grammars

    async def _output_grammar(self, request: GenerationRequest) -> CompiledOutput | None:
        """The grammar that ``tools``/``tool_choice``/``response_format`` ask for, or a 400
        for what this engine cannot honour."""
        try:
            mode = output_mode(request)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from exc
        if mode is None:
            return None
        if isinstance(mode, AutoTools):
            if self.supports_tool_choice_auto:
                return None  # free text; the model's calls are parsed from it
            why = ("it has no parser for its model's tool-call format (configure one with "
                   "--tool-call-parser)" if self._renders_tools
                   else "its chat template cannot show the model tools")
            raise InvalidRequestError(
                f"tool_choice 'auto' (the default when tools are given) is not supported by "
                f"'{self.loaded.info.name}' yet: {why}. Use tool_choice 'required' or "
                "{'type': 'function', 'function': {'name': ...}} (the call is then generated "
                "under the function's schema), or 'none'", param="tool_choice")
        if request.ignore_eos:
            raise InvalidRequestError("ignore_eos cannot be combined with a forced tool call or "
                                      "a JSON response_format: the answer ends with its grammar",
                                      param="ignore_eos")
        if isinstance(mode, ForcedToolCall):
            if request.stop:
                raise InvalidRequestError("stop sequences cannot be combined with a forced tool "
                                          "call: they would cut its arguments", param="stop")
            if request.continue_final_message:
                raise InvalidRequestError("a forced tool call cannot continue a final assistant "
                                          "message", param="continue_final_message")
        book = self.grammar_book()
        calls = self._call_format(mode) if isinstance(mode, ForcedToolCall) else None
        compiled = await asyncio.to_thread(book.compile, mode, calls)
        if request.continue_final_message:
            book.start(compiled, self._partial_answer(request))
        return compiled

    def _forced_calls_parser(self) -> type[ToolCallParser]:
        """The format forced calls are written in: the model's own if it has a parser (so
        it writes them as it learned to), else, for several calls, JSON objects one after
        another (which ``llama3_json`` reads)."""
        return self.tool_parser or Llama3JsonParser

    def _call_format(self, mode: ForcedToolCall) -> CallFormat | None:
        """None: one call of a model without a parser (its arguments alone, or
        ``{"name": ..., "arguments": ...}`` among several functions)."""
        if self.tool_parser is None and not mode.parallel:
            return None
        parser = self._forced_calls_parser()
        return CallFormat(parser.call_before, parser.call_after, parser.call_separator)

    @staticmethod
    def _partial_answer(request: GenerationRequest) -> str:
        if not request.continue_final_message or not request.messages:
            return ""
        return request.messages[-1].content

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        payload = prepared.payload
        if not isinstance(payload, tuple):
            raise TypeError("prepared request does not come from this engine")
        ids, adapter, compiled = payload
        activate = None
        if self.adapters is not None:
            pool = self.adapters

            def activate() -> None:
                pool.activate(adapter)

        def generate(request: GenerationRequest) -> AsyncIterator[StreamEvent]:
            if self.tool_parser is not None and self.supports_tool_choice_auto \
                    and isinstance(output_mode(request), AutoTools):
                return self._auto_tools(request, ids, activate, self.tool_parser, adapter)
            banned = unoffered_call_tokens(self._call_openers, request.tools,
                                           request.tool_choice)
            if compiled is None:
                return self._scheduler.run(DecodeJob(self.loaded, request, ids, activate,
                                                     banned=banned, adapter=adapter))
            grammar = self.grammar_book().start(compiled, self._partial_answer(request))
            events = self._scheduler.run(DecodeJob(self.loaded, request, ids, activate, grammar,
                                                   banned, adapter))
            if compiled.wrapped:
                parser = self._forced_calls_parser()(compiled.tool_names)
                return parsed_tool_calls(events, parser, content=False)
            return as_tool_call(events, compiled.tool_names) if compiled.tool_names else events

        return generate(prepared.request)

    def _auto_tools(self, request: GenerationRequest, ids: list[int],
                    activate: Callable[[], None] | None, parser_class: type[ToolCallParser],
                    adapter: str | None = None) -> AsyncIterator[StreamEvent]:
        """Free generation under ``tool_choice: auto``, its calls parsed out of the text."""
        names = [str(tool["function"]["name"]) for tool in request.tools]
        parser = parser_class(names, parallel=request.parallel_tool_calls is not False)
        generated = request
        if not parser.parallel and parser.call_end:  # stop once the one call is written
            generated = dataclasses.replace(request, stop=(*request.stop, parser.call_end))
        events = self._scheduler.run(DecodeJob(self.loaded, generated, ids, activate,
                                               adapter=adapter))
        return parsed_tool_calls(events, parser)

    def stats(self) -> dict[str, int]:
        stats = self._scheduler.stats()
        if self._grammars is not None:
            stats.update(self._grammars.counters)
        if self.adapters is not None:
            stats.update({f"adapter_{k}": v for k, v in self.adapters.counters.items()})
            stats["adapters_loaded"] = len(self.adapters.loaded())
        if self.embedder is not None:
            stats.update(self.embedder.counters)
        return stats

    async def aclose(self) -> None:
        await asyncio.to_thread(self._scheduler.close)
