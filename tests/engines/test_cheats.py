"""The cheats do what they claim, and never touch a model they were handed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from agoranet.engines.base import Engine, GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine
from agoranet.engines.prompt import encode_prompt
from agoranet.errors import ConfigError
from agoranet.testing.cheats import CHEATS, cheating_engine, engine_with_cheat, make_cheat
from agoranet.tinymodel import TinySpec, build_tiny_model

SYSTEM = Message("system", "You are a helpful assistant.")
ASK = Message("user", "Where is the cat?")


def digest(model: Any) -> str:
    sha = hashlib.sha256()
    for tensor in model.state_dict().values():
        sha.update(tensor.float().numpy().tobytes())
    return sha.hexdigest()


def test_cheats_are_known_by_name() -> None:
    assert set(CHEATS) == {"int4", "int8", "nosystem", "replay", "smaller", "template"}
    with pytest.raises(ConfigError, match="unknown cheat 'int3'"):
        make_cheat("int3")
    with pytest.raises(ConfigError, match="smaller:PATH"):
        make_cheat("smaller")


async def test_rounded_weights_are_a_copy(tiny_loaded: Any) -> None:
    before = digest(tiny_loaded.model)
    engine = cheating_engine("int4", loaded=tiny_loaded)
    try:
        assert engine.loaded.model is not tiny_loaded.model
        assert digest(engine.loaded.model) != before
        claimed = engine.models()[0]  # still claims the honest hashes
        assert (claimed.name, claimed.weights_sha256, claimed.model_sha256) == (
            tiny_loaded.info.name, tiny_loaded.info.weights_sha256,
            tiny_loaded.info.model_sha256)
    finally:
        await engine.aclose()
    assert digest(tiny_loaded.model) == before


async def test_prompt_cheats_change_the_prompt(tiny_loaded: Any) -> None:
    request = GenerationRequest(model="tiny", messages=(SYSTEM, ASK))
    tokenizer = tiny_loaded.tokenizer
    honest = encode_prompt(tokenizer, request)
    without_system = encode_prompt(tokenizer, GenerationRequest(model="tiny", messages=(ASK,)))
    for cheat, expected in (("nosystem", without_system), (None, honest)):
        engine = engine_with_cheat(cheat, loaded=tiny_loaded)
        try:
            assert (await engine.prepare(request)).payload == (expected, None, None)
        finally:
            await engine.aclose()
    plain = make_cheat("template").encode(tokenizer, request)
    assert tokenizer.decode(plain) == ("System: You are a helpful assistant.\n"
                                       "User: Where is the cat?\nAssistant:")


async def test_replay_ignores_the_seed(tiny_loaded: Any) -> None:
    def ask(seed: int, content: str = "Tell me a story.", logprobs: bool = True) -> GenerationRequest:
        return GenerationRequest(model="tiny", messages=(Message("user", content),),
                                 max_tokens=24, temperature=1.0, seed=seed, logprobs=logprobs)

    async def ids(engine: Engine, request: GenerationRequest) -> list[int | None]:
        _, tokens, _ = await collect(engine.stream(await engine.prepare(request)))
        return [t.token_id for t in tokens]

    honest = TransformersEngine(loaded=tiny_loaded)
    replay = cheating_engine("replay", loaded=tiny_loaded)
    try:
        seeds = [s for s in range(1, 40) if await ids(honest, ask(s)) != await ids(honest, ask(0))]
        assert seeds  # some seed gives another honest answer
        first = await ids(replay, ask(0, logprobs=False))  # cached with token ids all the same
        assert first == await ids(honest, ask(0)) and None not in first
        assert await ids(replay, ask(seeds[0])) == first  # replayed, whatever the seed
        other = ask(0, "Hello!")
        assert await ids(replay, other) == await ids(honest, other)
    finally:
        await honest.aclose()
        await replay.aclose()


def test_smaller_refuses_another_tokenizer(tmp_path: Path, tiny_loaded: Any) -> None:
    spec = TinySpec(steps=1, dialogues=200, hidden_size=32, intermediate_size=64,
                    num_heads=2, num_kv_heads=1, num_layers=1, vocab_size=400)
    build_tiny_model(tmp_path / "other", spec)
    with pytest.raises(ConfigError, match="another tokenizer"):
        make_cheat(f"smaller:{tmp_path / 'other'}").serve(tiny_loaded)
