"""Continuous batching in the transformers engine (issue #17), on the real tiny model.

Every request's answer (text, token ids, logprobs, finish, commitments) must be the
same whether it ran alone or among many different requests in one batch: greedy
ones bit for bit, seeded ones draw for draw, with grammars, stop strings, adapters,
long prompts fed in chunks, and commitments in the mix. The batch must really be one
(the engine's ``max_batch`` counter), and its memory must stay bounded and be freed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine
from agoranet.tuning.adapter import adapter_model_name, pack_adapter
from agoranet.verify.node_audit import challenges

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
LONG = "Tell me about the cat and the dog in the garden. " * 14  # several chunks of 64


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    token_ids: tuple[int | None, ...]
    logprobs: tuple[float, ...]
    top: tuple[Any, ...]
    reason: str
    completion_tokens: int
    commitments: Any


def mixed_requests(adapters: list[str]) -> list[GenerationRequest]:
    """At least 16 different requests: greedy and seeded, several temperatures and top_p,
    stops, max_tokens, a JSON schema, top logprobs, commitments, adapters, long prompts."""
    rng = random.Random(17)
    drawn = challenges(12, "tiny", 24, rng)
    requests = [dataclasses.replace(r, max_tokens=6 + 5 * i, logprobs=True,
                                    top_logprobs=i % 4) for i, r in enumerate(drawn)]
    chat = (Message("user", "Where is the cat?"),)
    requests += [
        GenerationRequest(model="tiny", messages=chat, max_tokens=30, temperature=0.7,
                          top_p=0.9, seed=5, logprobs=True, top_logprobs=2),
        GenerationRequest(model="tiny", messages=chat, max_tokens=40, temperature=0.0,
                          stop=(" the", "."), logprobs=True),
        GenerationRequest(model="tiny", messages=chat, max_tokens=60, temperature=1.0, seed=9,
                          logprobs=True, response_format={
                              "type": "json_schema",
                              "json_schema": {"name": "person", "schema": SCHEMA}}),
        GenerationRequest(model="tiny", messages=chat, max_tokens=50, temperature=0.0,
                          logprobs=True, response_format={"type": "json_object"}),
        GenerationRequest(model="tiny", messages=(Message("user", LONG),), max_tokens=20,
                          temperature=0.0, logprobs=True, top_logprobs=1, commitments=True),
        GenerationRequest(model="tiny", messages=(Message("user", LONG + "Why?"),),
                          max_tokens=33, temperature=1.3, seed=3, logprobs=True),
        GenerationRequest(model="tiny", prompt="The cat", max_tokens=25, temperature=0.0,
                          logprobs=True, ignore_eos=True, commitments=True),
    ]
    for i, name in enumerate(adapters):
        requests += [
            GenerationRequest(model=name, messages=chat, max_tokens=24, temperature=0.0,
                              logprobs=True),
            GenerationRequest(model=name, messages=(Message("user", f"Story {i}?"),),
                              max_tokens=24, temperature=1.0, seed=40 + i, logprobs=True),
        ]
    return requests


async def answer(engine: TransformersEngine, request: GenerationRequest) -> Answer:
    text, tokens, finish = await collect(engine.stream(await engine.prepare(request)))
    return Answer(text, tuple(t.token_id for t in tokens), tuple(t.logprob for t in tokens),
                  tuple(t.top for t in tokens), finish.reason, finish.completion_tokens,
                  finish.commitments)


@pytest.fixture(scope="module")
def adapter_paths(house_adapter: Path, brief_adapter: Path) -> list[Path]:
    return [house_adapter, brief_adapter]


@pytest.fixture
async def engine(tiny_loaded: Any, tmp_path: Path) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine(loaded=tiny_loaded, max_active=32, max_queue=256,
                                adapters_dir=tmp_path / "adapters", prefill_chunk=64)
    yield engine
    await engine.aclose()


def names(engine: TransformersEngine, paths: list[Path]) -> list[str]:
    return [adapter_model_name("tiny", engine.add_adapter(pack_adapter(p), 10**8).id)
            for p in paths]


async def test_answers_are_the_same_alone_and_in_any_batch(
        engine: TransformersEngine, adapter_paths: list[Path]) -> None:
    requests = mixed_requests(names(engine, adapter_paths))
    assert len(requests) >= 16
    alone = [await answer(engine, r) for r in requests]
    together = await asyncio.gather(*(answer(engine, r) for r in requests))
    batched = engine.stats()["max_batch"]
    # Another composition: reversed, beside other traffic, joining a running batch.
    filler = challenges(10, "tiny", 30, random.Random(3))
    mixed = await asyncio.gather(*(answer(engine, r) for r in [*filler, *reversed(requests)]))
    again = list(reversed(mixed[len(filler):]))
    for index, request in enumerate(requests):
        assert together[index] == alone[index], (index, request)
        assert again[index] == alone[index], (index, request)
    assert batched >= 16, f"the concurrent requests never shared a step ({batched})"
    assert any(a.reason == "stop" for a in alone) and any(a.reason == "length" for a in alone)
    assert all(a.commitments is not None for a, r in zip(alone, requests, strict=True)
               if r.commitments)


async def test_the_unbatched_engine_gives_the_same_greedy_answers(tiny_loaded: Any) -> None:
    """The one-sequence-per-step engine (``batching=False``) stays available and agrees,
    also on prompts the batched engine feeds in several chunks."""
    old = TransformersEngine(loaded=tiny_loaded, batching=False, max_active=8)
    new = TransformersEngine(loaded=tiny_loaded, max_active=8, prefill_chunk=64)
    greedy = [r for r in challenges(16, "tiny", 24, random.Random(8)) if r.temperature == 0.0]
    greedy += [GenerationRequest(model="tiny", messages=(Message("user", LONG + tail),),
                                 max_tokens=24, temperature=0.0, logprobs=True)
               for tail in ("", "Why?", "Where is the cat?")]
    try:
        expected = await asyncio.gather(*(answer(old, r) for r in greedy))
        got = await asyncio.gather(*(answer(new, r) for r in greedy))
        assert "max_batch" not in old.stats() and new.stats()["max_batch"] > 1
    finally:
        await old.aclose()
        await new.aclose()
    assert [a.token_ids for a in got] == [a.token_ids for a in expected]
    assert [a.completion_tokens for a in got] == [a.completion_tokens for a in expected]


async def test_adapters_in_one_pass_answer_as_the_unbatched_engine(
        tiny_model: Path, adapter_paths: list[Path], tmp_path: Path) -> None:
    """Gathered LoRA rows in the batch give each request its own adapter's answer (the
    unbatched engine switches peft's adapters between steps)."""
    from agoranet.engines.hf import load_model

    engines = [TransformersEngine(loaded=load_model(str(tiny_model)), max_active=16,
                                  batching=batching, adapters_dir=tmp_path / str(batching))
               for batching in (False, True)]
    try:
        models = [["tiny", *names(engine, adapter_paths)] for engine in engines]
        chat = (Message("user", "Where is the cat?"),)
        answers = []
        for engine, served in zip(engines, models, strict=True):
            requests = [GenerationRequest(model=model, messages=chat, max_tokens=24,
                                          temperature=0.0, logprobs=True)
                        for model in served for _ in range(3)]
            answers.append(await asyncio.gather(*(answer(engine, r) for r in requests)))
    finally:
        for engine in engines:
            await engine.aclose()
    unbatched, batched = ([a.token_ids for a in found] for found in answers)
    assert batched == unbatched
    assert len({unbatched[0], unbatched[3], unbatched[6]}) == 3  # the adapters do differ


def slot_bound(engine: TransformersEngine, positions: int) -> int:
    """The most bytes one sequence's cache may hold for ``positions`` (capacity doubles)."""
    config = engine.loaded.model.config
    capacity = 64
    while capacity < positions:
        capacity *= 2
    head = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    return 2 * config.num_hidden_layers * config.num_key_value_heads * capacity * head * 4


async def test_memory_stays_bounded_and_is_freed(tiny_loaded: Any) -> None:
    engine = TransformersEngine(loaded=tiny_loaded, max_active=16, max_queue=256)
    requests = challenges(200, "tiny", 4, random.Random(11))
    longest = max(await asyncio.gather(*(engine.prepare(r) for r in requests)),
                  key=lambda p: p.prompt_tokens).prompt_tokens
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            stats = engine.stats()
            assert stats["active"] <= 16
            peak = max(peak, stats["batch_cache_bytes"])
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(watch())
    try:
        results = await asyncio.gather(*(answer(engine, r) for r in requests))
    finally:
        done.set()
        await watcher
        stats = engine.stats()
        await engine.aclose()
    assert len(results) == 200 and stats["completed"] == 200
    assert stats["active"] == 0 and stats["batch_cache_bytes"] == 0
    assert stats["max_batch"] == 16
    assert 0 < peak <= 16 * slot_bound(engine, longest + 4)


async def test_a_cancelled_stream_leaves_the_batch_at_once(tiny_loaded: Any) -> None:
    engine = TransformersEngine(loaded=tiny_loaded, max_active=4, max_queue=8)
    request = GenerationRequest(model="tiny", messages=(Message("user", "Hi"),),
                                max_tokens=400, temperature=0.0, ignore_eos=True)
    streams = [engine.stream(await engine.prepare(request)) for _ in range(4)]
    try:
        for stream in streams:
            await anext(stream)  # all four are generating
        assert engine.stats()["active"] == 4
        await streams[0].aclose()  # the client went away
        for _ in range(10_000):  # it leaves at the next step boundary
            stats = engine.stats()
            if stats["cancelled"] == 1:
                break
            await anext(streams[1])  # while the others keep going
        assert stats["cancelled"] == 1 and stats["active"] == 3
        waiting = engine.stream(await engine.prepare(request))
        await anext(waiting)  # its slot is free for a new request
        assert engine.stats()["active"] == 4
        await waiting.aclose()
    finally:
        for stream in streams[1:]:
            await stream.aclose()
        await engine.aclose()
