"""The transformers engine on the real tiny model."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest

from agoranet.engines.base import Delta, Finish, GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine, resolve_model_dir
from agoranet.errors import ModelLoadError, ModelNotFoundError

WORD = re.compile(r"[A-Za-z]+")


def chat(text: str, **kw: object) -> GenerationRequest:
    base = {"model": "tiny", "messages": (Message("user", text),), "max_tokens": 40,
            "temperature": 0.0}
    base.update(kw)
    return GenerationRequest(**base)  # type: ignore[arg-type]


async def run(engine: TransformersEngine, request: GenerationRequest) -> tuple[str, list, Finish]:
    return await collect(engine.stream(await engine.prepare(request)))


async def test_greedy_answer_is_words_and_repeatable(tiny_engine: TransformersEngine) -> None:
    first, _, finish = await run(tiny_engine, chat("What did Anna do today?"))
    second, _, _ = await run(tiny_engine, chat("What did Anna do today?"))
    assert first == second
    assert finish.reason == "stop" and finish.completion_tokens > 3
    words = WORD.findall(first)
    assert len(words) >= 5, first
    assert first.rstrip().endswith((".", "!", "?")), first


async def test_seed_makes_sampling_reproducible(tiny_engine: TransformersEngine) -> None:
    request = chat("Tell me a story.", temperature=1.0, seed=7)
    a, _, _ = await run(tiny_engine, request)
    b, _, _ = await run(tiny_engine, request)
    others = {(await run(tiny_engine, dataclasses.replace(request, seed=s)))[0] for s in range(8)}
    assert a == b
    assert len(others) > 1  # different seeds explore different answers


async def test_logprobs_are_consistent(tiny_engine: TransformersEngine) -> None:
    text, tokens, finish = await run(tiny_engine, chat("Hello!", logprobs=True, top_logprobs=3))
    assert len(tokens) == finish.completion_tokens
    for token in tokens:
        assert token.logprob <= 0.0
        assert len(token.top) == 3
        # Greedy: the chosen token is the most likely one.
        assert token.top[0][0] == token.token
        assert token.top[0][1] == pytest.approx(token.logprob)
        assert [lp for _, lp, _ in token.top] == sorted((lp for _, lp, _ in token.top), reverse=True)
    assert "".join(t.token for t in tokens[:-1]) == text  # the last one is <|end|>


async def test_max_tokens_gives_length(tiny_engine: TransformersEngine) -> None:
    _, _, finish = await run(tiny_engine, chat("Tell me a story.", max_tokens=3))
    assert (finish.reason, finish.completion_tokens) == ("length", 3)


async def test_stop_sequence_cuts_the_text(tiny_engine: TransformersEngine) -> None:
    full, _, _ = await run(tiny_engine, chat("Tell me a story."))
    cut_at = full.index(".")
    text, _, finish = await run(tiny_engine, chat("Tell me a story.", stop=["."]))
    assert finish.reason == "stop"
    assert text == full[:cut_at]


async def test_continue_final_message_continues_the_prefix(tiny_engine: TransformersEngine) -> None:
    full, _, _ = await run(tiny_engine, chat("What did Anna do today?"))
    prefix = full[: len(full) // 2]
    prefix = prefix[: prefix.rindex(" ")]  # cut at a word boundary
    request = chat("What did Anna do today?", add_generation_prompt=False,
                   continue_final_message=True)
    request = dataclasses.replace(
        request, messages=(*(request.messages or ()), Message("assistant", prefix))
    )
    rest, _, _ = await run(tiny_engine, request)
    assert prefix + rest == full


async def test_concurrent_streams_equal_solo_runs(tiny_engine: TransformersEngine) -> None:
    prompts = ["Hello!", "Tell me about the park.", "Where is the cat?", "Any idea for dinner?"]
    solo = [(await run(tiny_engine, chat(p)))[0] for p in prompts]
    together = await asyncio.gather(*(run(tiny_engine, chat(p)) for p in prompts))
    assert [t[0] for t in together] == solo


async def test_stream_yields_tokens_one_by_one(tiny_engine: TransformersEngine) -> None:
    events = [e async for e in tiny_engine.stream(await tiny_engine.prepare(chat("Hello!")))]
    deltas = [e for e in events if isinstance(e, Delta)]
    assert isinstance(events[-1], Finish)
    assert len(deltas) == events[-1].completion_tokens


async def test_unknown_model_is_refused(tiny_engine: TransformersEngine) -> None:
    with pytest.raises(ModelNotFoundError):
        await tiny_engine.prepare(dataclasses.replace(chat("hi"), model="gpt-5"))


def test_model_reference_that_is_neither_a_dir_nor_a_hub_id() -> None:
    with pytest.raises(ModelLoadError, match="no such directory"):
        resolve_model_dir("./no/such/model")
