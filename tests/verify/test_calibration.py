"""Calibrated audits on the tiny model (issue #8).

Honest engines in several configurations (1, 4 and 16 concurrent streams, batched
in one forward pass per step, torch threads, greedy and seeded sampling) must never be flagged:
with and without commitments (an answer with them must pass both checks), 672
answers in two halves (by torch threads, so xdist workers share them), each
reporting its measured false-positive rate with the 95% upper bound (rule of
three: 3/n). Every cheat of ``agoranet.testing.cheats`` that the audit can
see is audited with fresh challenges and must be caught within 2,000 audited
tokens: int4, the smaller model, replay, another chat template and dropped
system messages; int4 with commitments in its first answer. int8 weights
drift less than the audit's tolerance for honest bf16/thread noise, so they
are not a detection claim: ``bench/verify.py`` measures them.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from agoranet.engines.base import GenerationRequest
from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.testing.cheats import cheating_engine
from agoranet.verify.calibration import Tally, audit_engine, generate_answers
from agoranet.verify.node_audit import challenge, challenges

ANSWER_TOKENS = 24
PER_CONFIG = 42  # 16 honest configurations: 672 answers
CHEAT_ANSWERS = 40
CAUGHT_WITHIN = 2_000  # audited output tokens


@dataclass(frozen=True)
class Honest:
    """One honest serving configuration."""

    concurrency: int  # streams generated at once on the engine's step scheduler
    threads: int  # torch intra-op threads
    sampled: bool  # seeded sampling at temperature 1, else greedy
    options: Mapping[str, Any] = field(default_factory=dict)  # extra request fields

    @property
    def name(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.options.items())
        mode = "sampled" if self.sampled else "greedy"
        return f"{self.concurrency} streams, {self.threads} thread(s), {mode}{extra}"


# With commitments (TOPLOC-style), the answer must also pass the commitment check.
PROVED = {"commitments": True}
# Concurrent streams run in one batch (continuous batching): batch sizes 1 to 16.
HONEST = [Honest(c, t, s) for c in (1, 4, 16) for t in (1, 2) for s in (False, True)] + [
    Honest(1, 1, True, PROVED), Honest(16, 1, False, PROVED),
    Honest(4, 2, True, PROVED), Honest(1, 2, False, PROVED)]


def honest_requests(config: Honest, rng: random.Random) -> list[GenerationRequest]:
    drawn = challenges(PER_CONFIG, "tiny", ANSWER_TOKENS, rng)
    return [dataclasses.replace(
        challenge(int(config.sampled), r.messages or (), "tiny", ANSWER_TOKENS,
                  seed=rng.randrange(2**31)), **config.options) for r in drawn]


def line(name: str, tally: Tally) -> str:
    first = tally.first_flag_at if tally.first_flag_at is not None else "-"
    return (f"{name:<34} flagged {tally.flagged:>3}/{tally.answers:<3} ({tally.rate:6.1%})  "
            f"tokens {tally.tokens:>5}  first flag at token {first}")


@pytest.mark.parametrize("cheat", ["int4", "smaller", "template", "nosystem",
                                   "int4+commitments"])
async def test_cheat(cheat: str, tiny_loaded: Any, small_model: Path) -> None:
    name, _, proved = cheat.partition("+")
    spec = f"smaller:{small_model}" if name == "smaller" else name
    engine = cheating_engine(spec, loaded=tiny_loaded)  # cheats never touch tiny_loaded
    drawn = challenges(CHEAT_ANSWERS, "tiny", ANSWER_TOKENS, random.Random(100))
    if proved:
        drawn = [dataclasses.replace(r, commitments=True) for r in drawn]
    try:
        tally = await audit_engine(engine, tiny_loaded, drawn)
    finally:
        await engine.aclose()
    print("\n" + line(cheat, tally))
    within = ANSWER_TOKENS if proved else CAUGHT_WITHIN  # hidden states give int4 away at once
    assert tally.first_flag_at is not None and tally.first_flag_at <= within, line(cheat, tally)


async def test_replay_passes_repeated_audits_and_fails_fresh_ones(tiny_loaded: Any) -> None:
    engine = cheating_engine("replay", loaded=tiny_loaded)
    drawn = challenges(20, "tiny", ANSWER_TOKENS, random.Random(5))
    fixed = list({tuple(r.messages or ()): r for r in drawn}.values())  # an audit of distinct prompts
    try:
        await generate_answers(engine, fixed)  # earlier traffic: answered honestly, and cached
        repeated = await audit_engine(engine, tiny_loaded, fixed)  # same prompts and seeds
        fresh = await audit_engine(engine, tiny_loaded, challenges(
            CHEAT_ANSWERS, "tiny", ANSWER_TOKENS, random.Random(6)))
    finally:
        await engine.aclose()
    print("\n" + line("replay, repeated challenges", repeated) + "\n"
          + line("replay, fresh challenges", fresh))
    assert repeated.flagged == 0  # why an audit must never repeat its seeds
    assert fresh.first_flag_at is not None and fresh.first_flag_at <= CAUGHT_WITHIN


@pytest.mark.parametrize("threads", sorted({c.threads for c in HONEST}),
                         ids=lambda n: f"{n} torch threads")  # halves, last: xdist shares them out
@pytest.mark.timeout(900)  # 2-thread passes on a busy 2-core box: ~3x the 1-thread time
async def test_honest_engines_are_never_flagged(threads: int, tiny_model: Path,
                                                tiny_loaded: Any) -> None:
    served = load_model(str(tiny_model))  # the node's own copy; tiny_loaded is the reference
    rows: list[tuple[str, Tally]] = []
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)  # before each engine's worker thread starts
        for index, config in enumerate(HONEST):
            if config.threads != threads:
                continue
            # The batched worker's passes run on its own thread count (default 1): this one.
            engine = TransformersEngine(loaded=served, max_active=16, max_queue=64,
                                        batch_threads=threads)
            try:
                tally = await audit_engine(engine, tiny_loaded,
                                           honest_requests(config, random.Random(index)),
                                           concurrency=config.concurrency)
            finally:
                await engine.aclose()
            rows.append((config.name, tally))
    finally:
        torch.set_num_threads(before)
    answers = sum(t.answers for _, t in rows)
    flagged = sum(t.flagged for _, t in rows)
    print("\n" + "\n".join(line(name, tally) for name, tally in rows))
    print(f"honest, {threads} torch threads: {flagged} of {answers} answers flagged "
          f"({sum(t.tokens for _, t in rows)} tokens); false-positive rate {flagged / answers:.2%}, "
          f"95% upper bound {3 / answers:.2%} (rule of three; {len(HONEST) * PER_CONFIG} answers "
          f"over both halves)")
    assert answers == PER_CONFIG * sum(1 for c in HONEST if c.threads == threads)
    assert flagged == 0, [line(name, t) for name, t in rows if t.flagged]
