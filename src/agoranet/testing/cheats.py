"""Dishonest serving, for tests of the auditor only: the frauds audits must catch.

A cheating node still publishes the honest weights' sha256 (hashed from the
files) and the honest model's name while it serves something cheaper. Each
cheat is registered by name and changes one or more of three things of the
transformers engine it wraps (:class:`CheatingEngine`): the weights it serves,
how it turns a request into prompt ids, and the stream of events it returns.
The production engine knows nothing of them. A spec is ``NAME`` or
``NAME:ARG``:

- ``int8``, ``int4``: every linear layer rounded per output channel (a cheap
  quantised copy of the same weights);
- ``smaller:PATH``: another model with the same tokenizer (``agoranet model tiny
  PATH --size small``) served in place of the honest weights;
- ``template``: a plain ``User: …`` / ``Assistant:`` prompt instead of the
  model's chat template (a sloppy deployment);
- ``nosystem``: the model's template, but system messages dropped;
- ``replay``: answers cached by prompt (model, messages, max_tokens) and
  replayed when the prompt repeats, whatever the seed or temperature.

Tests build one with :func:`cheating_engine`; a node process gets one from the
test-only entry point ``python -m agoranet.testing node --cheat SPEC ...``
(:mod:`agoranet.testing.node`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any

import torch

from agoranet.engines.base import Finish, GenerationRequest, ModelInfo, Prepared, StreamEvent
from agoranet.engines.hf import TransformersEngine
from agoranet.engines.hf_loading import DEFAULT_MODEL, LoadedModel, load_model
from agoranet.engines.prompt import encode_prompt
from agoranet.errors import ConfigError

__all__ = ["CHEATS", "Cheat", "CheatingEngine", "cheating_engine", "degrade", "engine_with_cheat",
           "make_cheat"]

Generate = Callable[[GenerationRequest], AsyncIterator[StreamEvent]]


class Cheat:
    """A cheat's hooks; the base class is honest at every one."""

    def serve(self, loaded: LoadedModel) -> LoadedModel:
        """The model actually served in place of ``loaded`` (which is left untouched)."""
        return loaded

    def encode(self, tokenizer: Any, request: GenerationRequest) -> list[int]:
        """Prompt token ids for ``request``."""
        return encode_prompt(tokenizer, request)

    def stream(self, request: GenerationRequest, generate: Generate) -> AsyncIterator[StreamEvent]:
        """The events answered for ``request``; ``generate`` runs the (served) model."""
        return generate(request)


_REGISTRY: dict[str, Callable[[str | None], Cheat]] = {}


def _register(name: str) -> Callable[[Callable[[str | None], Cheat]], Callable[[str | None], Cheat]]:
    def add(factory: Callable[[str | None], Cheat]) -> Callable[[str | None], Cheat]:
        _REGISTRY[name] = factory
        return factory

    return add


def _round_per_channel(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel quantisation and back (what a cheap quantised copy does)."""
    levels = 2 ** (bits - 1) - 1
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / levels
    rounded: torch.Tensor = (weight / scale).round().clamp(-levels, levels) * scale
    return rounded


def degrade(model: Any, bits: int) -> None:
    """Replace every linear layer's weights in place by their ``bits``-bit rounding."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(_round_per_channel(module.weight.float(), bits))


class _Rounded(Cheat):
    def __init__(self, bits: int) -> None:
        self.bits = bits

    def serve(self, loaded: LoadedModel) -> LoadedModel:
        model = copy.deepcopy(loaded.model)  # never round a model others may be holding
        degrade(model, self.bits)
        return dataclasses.replace(loaded, model=model)


_register("int8")(lambda _: _Rounded(8))
_register("int4")(lambda _: _Rounded(4))


class _Smaller(Cheat):
    def __init__(self, path: str) -> None:
        self.path = path

    def serve(self, loaded: LoadedModel) -> LoadedModel:
        dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
        small = load_model(self.path, device=str(loaded.device), dtype=dtype)
        if small.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
            raise ConfigError(f"cheat smaller: {self.path} has another tokenizer than the model")
        return dataclasses.replace(loaded, model=small.model)


@_register("smaller")
def _smaller(arg: str | None) -> Cheat:
    if not arg:
        raise ConfigError("cheat smaller needs the smaller model's directory: smaller:PATH")
    return _Smaller(arg)


class _PlainTemplate(Cheat):
    def encode(self, tokenizer: Any, request: GenerationRequest) -> list[int]:
        if request.messages is None:
            return encode_prompt(tokenizer, request)
        text = "".join(f"{m.role.capitalize()}: {m.content}\n" for m in request.messages)
        return [int(i) for i in tokenizer(text + "Assistant:", add_special_tokens=False)["input_ids"]]


class _NoSystem(Cheat):
    def encode(self, tokenizer: Any, request: GenerationRequest) -> list[int]:
        kept = tuple(m for m in request.messages or () if m.role != "system")
        if request.messages is None or not kept:
            return encode_prompt(tokenizer, request)
        return encode_prompt(tokenizer, dataclasses.replace(request, messages=kept))


_register("template")(lambda _: _PlainTemplate())
_register("nosystem")(lambda _: _NoSystem())


class _Replay(Cheat):
    """Caches whole answers by prompt; seed and temperature are ignored."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self.cache: OrderedDict[Hashable, list[StreamEvent]] = OrderedDict()

    @staticmethod
    def _key(request: GenerationRequest) -> Hashable:
        messages = tuple((m.role, m.content) for m in request.messages or ())
        return request.model, messages, request.prompt, request.max_tokens

    def stream(self, request: GenerationRequest, generate: Generate) -> AsyncIterator[StreamEvent]:
        key = self._key(request)
        cached = self.cache.get(key)
        if cached is not None:
            return _replayed(cached)
        # Always keep token ids and logprobs, so a replay looks like a fresh answer.
        return self._recorded(key, generate(dataclasses.replace(request, logprobs=True)))

    async def _recorded(self, key: Hashable,
                        events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
        seen: list[StreamEvent] = []
        try:
            async for event in events:
                seen.append(event)
                if isinstance(event, Finish):
                    self.cache[key] = seen
                    while len(self.cache) > self.capacity:
                        self.cache.popitem(last=False)
                yield event
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()


async def _replayed(events: list[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event


_register("replay")(lambda _: _Replay())

CHEATS = tuple(sorted(_REGISTRY))


def make_cheat(spec: str) -> Cheat:
    """The cheat named by ``spec`` (``NAME`` or ``NAME:ARG``); loads nothing until it serves."""
    name, _, arg = spec.partition(":")
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown cheat {name!r}; known: {', '.join(CHEATS)}")
    return factory(arg or None)



class CheatingEngine:
    """A transformers engine (``inner``, built on the cheat's weights) wrapped by a cheat:
    the prompt ids and the answers are the cheat's; everything else is ``inner``'s."""

    def __init__(self, inner: TransformersEngine, cheat: Cheat, spec: str) -> None:
        self.inner = inner
        self.cheat = cheat
        self.spec = spec
        self.name = inner.name

    def __getattr__(self, attribute: str) -> Any:
        # Adapters, stats, the loaded model, tool parsing: the wrapped engine's own.
        return getattr(self.inner, attribute)

    def models(self) -> list[ModelInfo]:
        return self.inner.models()

    async def prepare(self, request: GenerationRequest) -> Prepared:
        prepared = await self.inner.prepare(request)
        if type(self.cheat).encode is Cheat.encode:
            return prepared
        payload = prepared.payload
        if not isinstance(payload, tuple):
            raise TypeError("a prompt cheat needs the transformers engine's (ids, ...) payload")
        ids = await asyncio.to_thread(self.cheat.encode, self.inner.loaded.tokenizer, request)
        return dataclasses.replace(prepared, prompt_tokens=len(ids), payload=(ids, *payload[1:]))

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        def generate(request: GenerationRequest) -> AsyncIterator[StreamEvent]:
            return self.inner.stream(dataclasses.replace(prepared, request=request))

        return self.cheat.stream(prepared.request, generate)

    def stats(self) -> dict[str, int]:
        return self.inner.stats()

    async def aclose(self) -> None:
        await self.inner.aclose()


def cheating_engine(spec: str, model: str | None = None, *, loaded: LoadedModel | None = None,
                    served_model_name: str | None = None, device: str = "auto",
                    dtype: str = "auto", **options: Any) -> CheatingEngine:
    """A transformers engine that cheats as ``spec`` says, claiming the honest model
    (``loaded``, else loaded from ``model``, which it never changes). ``options`` are the
    engine's (:class:`~agoranet.engines.hf.TransformersEngine`)."""
    cheat = make_cheat(spec)
    if loaded is None:
        loaded = load_model(model or DEFAULT_MODEL, served_name=served_model_name,
                            device=device, dtype=dtype)
    inner = TransformersEngine(loaded=cheat.serve(loaded), **options)
    return CheatingEngine(inner, cheat, spec)


def engine_with_cheat(spec: str | None, *, loaded: LoadedModel,
                      **options: Any) -> TransformersEngine | CheatingEngine:
    """The honest transformers engine on ``loaded`` if ``spec`` is None, else the cheat's."""
    if spec is None:
        return TransformersEngine(loaded=loaded, **options)
    return cheating_engine(spec, loaded=loaded, **options)
