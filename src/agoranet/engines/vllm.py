"""The ``vllm`` engine: a model served by vLLM in this process (the ``vllm`` extra, a CUDA GPU).

vLLM's ``AsyncLLMEngine`` runs on an event loop of its own
(:class:`~agoranet.engines.loop_thread.LoopThread`); each request streams its tokens
from there as vLLM produces them (``RequestOutputKind.DELTA``), and closing the stream
aborts the request in vLLM. Prompts are rendered and counted here with the model's own
tokenizer and chat template (:func:`~agoranet.engines.prompt.encode_prompt`, as the
transformers engine does), then given to vLLM as token ids, so what the node meters is
exactly what vLLM reads.

Per request: temperature, top-p, seed, ``max_tokens``, stop strings, logprobs with
token ids, ``ignore_eos`` (:func:`~agoranet.engines.vllm_params.sampling_kwargs`);
forced tool calls and JSON answers follow the transformers engine's grammar, given to
vLLM's structured outputs as EBNF (:func:`~agoranet.engines.vllm_params.plan_output`);
``tool_choice: auto`` is parsed from free text with the model's tool-call parser; LoRA
adapters from the node's store go to vLLM as ``LoRARequest`` s (uploads as for the
transformers engine).

What it does not do, and says so in its offer: no TOPLOC-style commitments (vLLM does not
hand out hidden states: requests asking for them get a 400) and no stated sampler
(``sampler`` is None): vLLM samples with its own kernels and random streams, so an
auditor with the reference weights can replay its greedy answers (argmax, token ids and
logprobs are returned) but not its seeded sampled ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from agoranet.engines import capabilities
from agoranet.engines.adapters import AdapterPool, PooledAdapters
from agoranet.engines.base import (
    Delta,
    Finish,
    GenerationRequest,
    ModelInfo,
    Prepared,
    StreamEvent,
)
from agoranet.engines.loop_thread import LoopThread
from agoranet.engines.prompt import encode_prompt, template_renders_tools
from agoranet.engines.registry import register_engine
from agoranet.engines.sampling import call_opener_ids, unoffered_call_tokens
from agoranet.engines.toolcall_stream import as_tool_call, parsed_tool_calls
from agoranet.engines.toolparsers import ToolCallParser, detect_tool_parser, tool_parser
from agoranet.engines.vllm_params import (
    LoraIds,
    OutputPlan,
    finish_reason,
    plan_output,
    sampling_kwargs,
    token_logprobs,
)
from agoranet.engines.weights import hash_weights, weight_files, weights_id
from agoranet.errors import (
    AdapterError,
    EngineError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
)
from agoranet.tuning.adapter import Adapter, parse_model_name

__all__ = ["VllmEngine", "require_vllm"]

INSTALL_HINT = "the vllm engine needs the 'vllm' extra: pip install 'agoranet[vllm]'"


def require_vllm(device: str = "auto") -> Any:
    """The ``vllm`` module, or a :class:`ModelLoadError` saying what is missing (the extra,
    or a CUDA GPU)."""
    try:
        import vllm
    except ImportError as exc:
        raise ModelLoadError(INSTALL_HINT) from exc
    if device != "auto" and not device.startswith("cuda"):
        raise ModelLoadError(f"vLLM needs a CUDA GPU; --device {device!r} is not one")
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadError("vLLM needs a CUDA GPU, and this machine shows none "
                             "(torch.cuda.is_available() is False); serve with "
                             "--engine transformers or llamacpp here")
    return vllm


@dataclass(frozen=True, slots=True)
class _Payload:
    ids: list[int]
    adapter: Adapter | None
    plan: OutputPlan
    banned: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Step:
    """What one of vLLM's delta outputs brings, in plain data (built in its loop)."""

    token_ids: list[int]
    logprobs: list[dict[int, dict[str, Any]]] | None
    text: str
    finish: str | None


async def _start_engine(vllm: Any, args: Any) -> Any:
    """Build the engine inside the loop it will run in."""
    return vllm.AsyncLLMEngine.from_engine_args(args)


@register_engine("vllm")
class VllmEngine(PooledAdapters):
    """Serves one model directory (or Hub id) through vLLM on a CUDA GPU."""

    name = "vllm"

    def __init__(
        self,
        model: str | None = None,
        *,
        served_model_name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_active: int = 8,
        max_queue: int = 64,
        adapters_dir: Path | None = None,
        max_adapters: int = 8,
        tool_call_parser: str | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.85,
        max_lora_rank: int = 64,
        enforce_eager: bool = False,
        engine_options: dict[str, Any] | None = None,
        embedding_pooling: str | None = None,
        **_: Any,
    ) -> None:
        if embedding_pooling is not None:
            raise ModelLoadError("the vllm engine does not serve /v1/embeddings; drop "
                                 "--embedding-pooling or use --engine transformers")
        vllm = require_vllm(device)
        from transformers import AutoTokenizer

        from agoranet.engines.hf_loading import DEFAULT_MODEL, max_token_bytes, resolve_model_dir

        directory, default_name = resolve_model_dir(model or DEFAULT_MODEL)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(directory)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load the tokenizer of {directory}: {exc}") from exc
        hashes = hash_weights(weight_files(directory), root=directory)
        name = served_model_name or default_name
        self.max_lora_rank = max_lora_rank
        args = vllm.AsyncEngineArgs(
            model=str(directory), tokenizer=str(directory), served_model_name=name,
            dtype=dtype, max_num_seqs=max_active, max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
            enable_lora=adapters_dir is not None, max_loras=max_adapters,
            max_lora_rank=max_lora_rank, disable_log_stats=True, **(engine_options or {}))
        self._loop = LoopThread("vllm-engine")
        try:
            self._llm = self._loop.call(_start_engine(vllm, args))
        except Exception as exc:  # vLLM's start-up errors are many and untyped
            self._loop.close()
            raise ModelLoadError(f"vLLM cannot serve {directory}: {exc}") from exc
        self._info = ModelInfo(
            name=name,
            context_length=int(self._llm.model_config.max_model_len),
            weights_sha256=hashes,
            model_sha256=weights_id(hashes) if hashes else None,
            sampler=None,  # vLLM's own sampling: greedy answers replay, seeded ones do not
            commitments=None,  # no hidden states from vLLM
            max_token_bytes=max_token_bytes(self._tokenizer),
            capabilities=frozenset({capabilities.TOOLS, capabilities.STRUCTURED_OUTPUT,
                                    capabilities.LOGPROBS}),
        )
        self._renders_tools = template_renders_tools(self._tokenizer)
        parser = tool_call_parser or (detect_tool_parser(self._tokenizer.chat_template)
                                      if self._renders_tools else None)
        self.tool_parser: type[ToolCallParser] | None = tool_parser(parser) if parser else None
        self._call_openers = call_opener_ids(self._tokenizer)
        self.adapters = (AdapterPool(None, self._info.model_sha256, Path(adapters_dir),
                                     max_adapters) if adapters_dir is not None else None)
        self._lora_ids = LoraIds()
        self._max_active, self._max_queue = max_active, max_queue
        self._lock = threading.Lock()
        self._texts: dict[int, str] = {}
        self.counters = {"active": 0, "completed": 0, "cancelled": 0, "failed": 0,
                         "generated_tokens": 0}

    # ------------------------------------------------------------------ offer

    @property
    def supports_tool_choice_auto(self) -> bool:
        return self.tool_parser is not None and self._renders_tools

    def models(self) -> list[ModelInfo]:
        info = self._info
        if self.supports_tool_choice_auto:
            return [dataclasses.replace(
                info, capabilities=info.capabilities | {capabilities.TOOL_CHOICE_AUTO})]
        return [info]

    # ---------------------------------------------------------------- prepare

    def _adapter_of(self, request: GenerationRequest) -> Adapter | None:
        try:
            base, ident = parse_model_name(request.model)
        except AdapterError as exc:
            raise InvalidRequestError(str(exc), param="model") from exc
        if base != self._info.name:
            raise ModelNotFoundError(f"The model '{request.model}' does not exist on this "
                                     f"node; it serves '{self._info.name}'", param="model")
        if ident is None:
            return None
        if self.adapters is None:
            raise ModelNotFoundError("this node does not serve adapters", param="model")
        adapter = self.adapters.get(ident)
        if adapter.manifest.rank > self.max_lora_rank:
            raise InvalidRequestError(
                f"adapter {ident[:12]} has rank {adapter.manifest.rank}; this node's vLLM "
                f"serves ranks up to {self.max_lora_rank}", param="model")
        return adapter

    async def prepare(self, request: GenerationRequest) -> Prepared:
        adapter = self._adapter_of(request)
        plan = plan_output(request, self.tool_parser, self._renders_tools, self._info.name)
        banned = unoffered_call_tokens(self._call_openers, request.tools, request.tool_choice)
        sampling_kwargs(request, banned)  # checked now; built again in stream (max_tokens)
        ids = await asyncio.to_thread(encode_prompt, self._tokenizer, request)
        return Prepared(request, len(ids), self._info.context_length,
                        _Payload(ids, adapter, plan, banned))

    # ----------------------------------------------------------------- stream

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        payload = prepared.payload
        if not isinstance(payload, _Payload):
            raise TypeError("prepared request does not come from this engine")
        request, plan = prepared.request, payload.plan
        if plan.auto and plan.parser is not None:
            names = [str(tool["function"]["name"]) for tool in request.tools]
            parser = plan.parser(names, parallel=request.parallel_tool_calls is not False)
            stop = None
            if not parser.parallel and parser.call_end:  # stop once the one call is written
                stop = (*request.stop, parser.call_end)
            kwargs = sampling_kwargs(request, payload.banned, stop=stop)
            return parsed_tool_calls(self._generate(prepared, kwargs), parser)
        events = self._generate(prepared, sampling_kwargs(request, payload.banned))
        if plan.wrapped and plan.parser is not None:
            return parsed_tool_calls(events, plan.parser(plan.tool_names), content=False)
        return as_tool_call(events, plan.tool_names) if plan.tool_names else events

    def _admit(self) -> None:
        with self._lock:
            if self.counters["active"] >= self._max_active + self._max_queue:
                raise OverloadedError(f"engine is busy: {self.counters['active']} requests in "
                                      "vLLM; retry shortly", retry_after=1)
            self.counters["active"] += 1

    def _count(self, outcome: str, tokens: int) -> None:
        with self._lock:
            self.counters["active"] -= 1
            self.counters[outcome] += 1
            self.counters["generated_tokens"] += tokens

    async def _generate(self, prepared: Prepared, kwargs: dict[str, Any]
                        ) -> AsyncIterator[StreamEvent]:
        payload = prepared.payload
        assert isinstance(payload, _Payload)
        self._admit()
        generated, outcome = 0, "cancelled"
        top = prepared.request.top_logprobs
        try:
            source = partial(self._outputs, payload, kwargs)
            async for step in self._loop.iterate(source):
                generated += len(step.token_ids)
                tokens = token_logprobs(step.token_ids, step.logprobs, top, self._text)
                if step.text or tokens:
                    yield Delta(step.text, tokens)
                if step.finish is not None:
                    reason = finish_reason(step.finish)
                    outcome = "completed"
                    yield Finish(reason, prepared.prompt_tokens, generated)
                    return
            outcome = "failed"
            raise EngineError("vLLM's stream ended without a finish")
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit | asyncio.CancelledError):
                outcome = "failed"
            raise
        finally:
            self._count(outcome, generated)

    async def _outputs(self, payload: _Payload, kwargs: dict[str, Any]
                       ) -> AsyncIterator[_Step]:
        """vLLM's delta outputs for one request (runs in the engine's loop)."""
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        try:
            params = SamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA,
                                    structured_outputs=self._structured(payload.plan))
            lora = self._lora_request(payload.adapter)
            outputs = self._llm.generate({"prompt_token_ids": payload.ids}, params,
                                         f"agoranet-{uuid.uuid4().hex}", lora_request=lora)
            async for output in outputs:
                completion = output.outputs[0]
                steps = None
                if completion.logprobs is not None:
                    steps = [{int(i): {"logprob": float(lp.logprob), "rank": lp.rank}
                              for i, lp in step.items()} for step in completion.logprobs]
                finish = completion.finish_reason if output.finished else None
                yield _Step([int(i) for i in completion.token_ids], steps,
                            completion.text or "", finish)
        except ValueError as exc:  # vLLM's verdict on the request itself
            raise InvalidRequestError(f"vLLM refused the request: {exc}") from exc
        except Exception as exc:  # its engine failed (EngineDeadError, EngineGenerateError)
            raise EngineError(f"vLLM failed: {exc}") from exc

    def _structured(self, plan: OutputPlan) -> Any:
        if plan.grammar is None:
            return None
        from vllm.sampling_params import StructuredOutputsParams

        return StructuredOutputsParams(grammar=plan.grammar)

    def _lora_request(self, adapter: Adapter | None) -> Any:
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(adapter.id, self._lora_ids(adapter.id), str(adapter.path))

    def _text(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = str(self._tokenizer.decode([token_id]))
        return text

    # --------------------------------------------------------------- lifecycle

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"queued": 0, **self.counters}

    async def aclose(self) -> None:
        llm = self._llm

        async def shutdown() -> None:
            llm.shutdown()

        try:
            await self._loop.acall(shutdown())
        finally:
            await asyncio.to_thread(self._loop.close)
