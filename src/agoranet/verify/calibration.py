"""Measuring an auditor: run requests through an engine, audit every answer, tally.

Used by the calibration tests (honest engines must never be flagged; cheats
must be) and by ``bench/verify.py``. Requests run in waves of ``concurrency``
simultaneous streams, so honest answers are also audited when they were
generated beside others on the engine's step scheduler. Answers are audited in
request order, which gives "audited tokens until the first flag".
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from agoranet.engines.base import Engine, GenerationRequest, collect
from agoranet.verify.audit import AuditResult, audit_answer

__all__ = ["Tally", "audit_engine", "generate_answers"]


@dataclass
class Tally:
    """What audits of a series of answers found."""

    answers: int = 0
    flagged: int = 0
    tokens: int = 0
    first_flag_at: int | None = None  # audited tokens, up to and including the first flagged answer
    generate_s: float = 0.0
    audit_s: float = 0.0

    def add(self, result: AuditResult) -> None:
        self.answers += 1
        self.tokens += result.tokens
        if result.flagged:
            self.flagged += 1
            if self.first_flag_at is None:
                self.first_flag_at = self.tokens

    @property
    def rate(self) -> float:
        return self.flagged / self.answers if self.answers else 0.0


async def _answer(engine: Engine, request: GenerationRequest) -> tuple[list[int], list[float]]:
    _, tokens, _ = await collect(engine.stream(await engine.prepare(request)))
    if any(t.token_id is None for t in tokens):
        raise ValueError("the engine returned tokens without ids: ask with logprobs=True")
    return [t.token_id or 0 for t in tokens], [t.logprob for t in tokens]


async def generate_answers(engine: Engine, requests: list[GenerationRequest], *,
                           concurrency: int = 1) -> list[tuple[list[int], list[float]]]:
    """Token ids and logprobs of each answer, ``concurrency`` streams at a time."""
    answers: list[tuple[list[int], list[float]]] = []
    for start in range(0, len(requests), concurrency):
        wave = requests[start : start + concurrency]
        answers.extend(await asyncio.gather(*(_answer(engine, r) for r in wave)))
    return answers


async def audit_engine(engine: Engine, reference: Any, requests: list[GenerationRequest], *,
                       concurrency: int = 1, tally: Tally | None = None) -> Tally:
    """Generate each request's answer with ``engine`` and audit it against ``reference``."""
    tally = tally or Tally()
    started = time.perf_counter()
    answers = await generate_answers(engine, requests, concurrency=concurrency)
    tally.generate_s += time.perf_counter() - started
    started = time.perf_counter()
    for request, (ids, logprobs) in zip(requests, answers, strict=True):
        tally.add(audit_answer(reference, request, ids, logprobs))
    tally.audit_s += time.perf_counter() - started
    return tally
