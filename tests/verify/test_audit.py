"""Audits catch a node serving rounded weights and never flag an honest one (tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agoranet.engines.base import collect
from agoranet.engines.hf import load_model
from agoranet.testing.cheats import engine_with_cheat
from agoranet.tinymodel.grammar import dialogues
from agoranet.verify.audit import audit_answer
from agoranet.verify.node_audit import challenge

QUESTIONS = [d[-2]["content"] for d in dialogues(40, seed=99)]


async def audited(tiny_model: Path, reference: object, cheat: str | None) -> tuple[int, int, int]:
    """(answers flagged, tokens audited, tokens audited when the first flag came)."""
    engine = engine_with_cheat(cheat, loaded=load_model(str(tiny_model)))
    flagged = tokens = 0
    first = 0
    try:
        for i, question in enumerate(QUESTIONS):
            request = challenge(i, question, "tiny", 40, seed=i)
            _, found, _ = await collect(engine.stream(await engine.prepare(request)))
            result = audit_answer(reference, request, [t.token_id or 0 for t in found],
                                  [t.logprob for t in found])
            tokens += result.tokens
            if result.flagged:
                flagged += 1
                first = first or tokens
    finally:
        await engine.aclose()
    return flagged, tokens, first


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> object:
    return load_model(str(tiny_model))


async def test_honest_node_is_never_flagged(tiny_model: Path, reference: object) -> None:
    flagged, tokens, _ = await audited(tiny_model, reference, None)
    print(f"\nhonest: 0 of {len(QUESTIONS)} answers expected flagged; got {flagged}, {tokens} tokens")
    assert flagged == 0


async def test_int4_weights_are_caught_within_2000_tokens(tiny_model: Path, reference: object) -> None:
    flagged, tokens, first = await audited(tiny_model, reference, "int4")
    print(f"\nint4: {flagged}/{len(QUESTIONS)} answers flagged, first after {first} of {tokens} tokens")
    assert flagged > 0 and first <= 2000
