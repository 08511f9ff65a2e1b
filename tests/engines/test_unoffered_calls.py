"""A model never calls a tool it was not offered, and audits replay that rule.

The tiny model learned the Hermes format from prompts that offer tools; asked something
new without any, it often opened a ``<tool_call>`` anyway (8 of 25 such prompts before
this rule). The stated sampler leaves the call openers out when a request offers no
tool to call, and an auditor with the reference weights does the same: honest answers
to those prompts are never flagged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.engines.sampling import (
    Sampler,
    call_opener_ids,
    offers_tools,
    unoffered_call_tokens,
)
from agoranet.tinymodel.toolcorpus import TOOLS
from agoranet.verify.audit import audit_answer, banned_tokens, reference_pass, score_answer

# Prompts on which the tiny model, unrestrained, opens a tool call though none is offered.
LEAKY = ["What time is it?", "Who is Priya?", "Explain how a bicycle works.",
         "Look for the keys.", "What should the team look for in the forest?"]
WEATHER = TOOLS["get_weather"]  # as the tiny model learned it


def test_the_sampler_never_picks_a_banned_token() -> None:
    logits = torch.tensor([0.0, 9.0, 1.0, 0.5])
    assert Sampler(0.0, 1.0, 1).choose(logits) == 1
    assert Sampler(0.0, 1.0, 1, banned=(1,)).choose(logits) == 2
    sampled = {Sampler(1.0, 1.0, seed, banned=(1,)).choose(logits) for seed in range(200)}
    assert 1 not in sampled and sampled <= {0, 2, 3}


def test_openers_are_banned_only_when_no_tool_is_offered() -> None:
    assert offers_tools([WEATHER], None) and offers_tools([WEATHER], "auto")
    assert offers_tools([WEATHER], {"type": "function", "function": {"name": "get_weather"}})
    assert not offers_tools([], None) and not offers_tools([WEATHER], "none")
    assert unoffered_call_tokens((7,), [], None) == (7,)
    assert unoffered_call_tokens((7,), [WEATHER], "none") == (7,)
    assert unoffered_call_tokens((7,), [WEATHER], "required") == ()


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> Any:
    return load_model(str(tiny_model))


def test_the_tiny_vocabulary_has_one_call_opener(loaded: Any) -> None:
    [opener] = call_opener_ids(loaded.tokenizer)
    assert loaded.tokenizer.convert_ids_to_tokens(opener) == "<tool_call>"


def _request(question: str, temperature: float, seed: int, **extra: Any) -> GenerationRequest:
    return GenerationRequest(model="tiny", messages=[Message(role="user", content=question)],
                             temperature=temperature, seed=seed, max_tokens=24, logprobs=True,
                             **extra)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_no_call_without_tools_and_the_audit_agrees(
        loaded: Any, temperature: float) -> None:
    engine = TransformersEngine(loaded=loaded)
    [opener] = call_opener_ids(loaded.tokenizer)
    leaked_unrestrained = 0
    try:
        for seed, question in enumerate(LEAKY):
            request = _request(question, temperature, seed)
            text, tokens, _ = await collect(engine.stream(await engine.prepare(request)))
            ids = [t.token_id or 0 for t in tokens]
            assert opener not in ids and "<tool_call>" not in text, (question, text)
            assert audit_answer(loaded, request, ids, [t.logprob for t in tokens]).flagged \
                is False, question
            # Without the rule, the reference's own sampler would open a call here.
            first = reference_pass(loaded, _prompt(loaded, request))[0][-1]
            leaked_unrestrained += Sampler(temperature, 1.0, seed).choose(first) == opener
            assert banned_tokens(loaded, request) == (opener,)
    finally:
        await engine.aclose()
    assert leaked_unrestrained >= 2  # the rule is what keeps these answers free of calls


def _prompt(loaded: Any, request: GenerationRequest) -> list[int]:
    from agoranet.engines.prompt import encode_prompt

    return encode_prompt(loaded.tokenizer, request)


async def test_an_audit_that_ignored_the_rule_would_flag_the_honest_answer(loaded: Any) -> None:
    engine = TransformersEngine(loaded=loaded)
    request = _request("What time is it?", 0.0, 0)
    try:
        _, tokens, _ = await collect(engine.stream(await engine.prepare(request)))
    finally:
        await engine.aclose()
    ids = [t.token_id or 0 for t in tokens]
    prompt = _prompt(loaded, request)
    logits, _ = reference_pass(loaded, prompt + ids)
    steps = logits[len(prompt) - 1: len(prompt) - 1 + len(ids)]
    assert score_answer(steps, request, ids, banned=banned_tokens(loaded, request)).flagged \
        is False
    assert score_answer(steps, request, ids).flagged is True


async def test_offered_tools_can_still_be_called(loaded: Any) -> None:
    engine = TransformersEngine(loaded=loaded)
    request = GenerationRequest(model="tiny", messages=(Message("user", "What is the weather "
                                                                "in Paris?"),),
                                max_tokens=120, temperature=0.0, tools=(WEATHER,),
                                tool_choice="auto")
    try:
        events = [e async for e in engine.stream(await engine.prepare(request))]
    finally:
        await engine.aclose()
    assert any(getattr(e, "tool_calls", None) for e in events), events
