"""Measuring an auditor: run requests through an engine, audit every answer, tally.

Used by the calibration tests (honest engines must never be flagged; cheats
must be) and by ``bench/verify.py``. Requests run in waves of ``concurrency``
simultaneous streams, so honest answers are also audited when they were
generated beside others on the engine's step scheduler. A request that asks for
commitments is also checked against them (:mod:`agoranet.verify.commitment_audit`). Answers are audited in
request order, which gives "audited tokens until the first flag".
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from agoranet.engines.base import Engine, GenerationRequest, collect
from agoranet.proofs.commitments import Commitments
from agoranet.verify.audit import AuditResult, audit_answer
from agoranet.verify.commitment_audit import audit_with_commitments

__all__ = ["Answer", "Tally", "audit", "audit_engine", "generate_answers"]


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


@dataclass(frozen=True)
class Answer:
    """What an engine returned for one request: token ids, logprobs, commitments if asked."""

    token_ids: list[int]
    logprobs: list[float]
    commitments: Commitments | None = None


async def _answer(engine: Engine, request: GenerationRequest) -> Answer:
    _, tokens, finish = await collect(engine.stream(await engine.prepare(request)))
    if any(t.token_id is None for t in tokens):
        raise ValueError("the engine returned tokens without ids: ask with logprobs=True")
    return Answer([t.token_id or 0 for t in tokens], [t.logprob for t in tokens],
                  finish.commitments)


async def generate_answers(engine: Engine, requests: list[GenerationRequest], *,
                           concurrency: int = 1) -> list[Answer]:
    """Each request's answer, ``concurrency`` streams at a time."""
    answers: list[Answer] = []
    for start in range(0, len(requests), concurrency):
        wave = requests[start : start + concurrency]
        answers.extend(await asyncio.gather(*(_answer(engine, r) for r in wave)))
    return answers


def audit(reference: Any, request: GenerationRequest, answer: Answer) -> AuditResult:
    """The seeded-sampling audit of ``answer``, also failed when its commitments (asked for
    with ``request.commitments``) are missing or do not verify."""
    if not request.commitments:
        return audit_answer(reference, request, answer.token_ids, answer.logprobs)
    result, proved = audit_with_commitments(reference, request, answer.token_ids,
                                            answer.logprobs, answer.commitments)
    return result if proved.passed else dataclasses.replace(result, flagged=True)


async def audit_engine(engine: Engine, reference: Any, requests: list[GenerationRequest], *,
                       concurrency: int = 1, tally: Tally | None = None) -> Tally:
    """Generate each request's answer with ``engine`` and audit it against ``reference``."""
    tally = tally or Tally()
    started = time.perf_counter()
    answers = await generate_answers(engine, requests, concurrency=concurrency)
    tally.generate_s += time.perf_counter() - started
    started = time.perf_counter()
    for request, answer in zip(requests, answers, strict=True):
        tally.add(audit(reference, request, answer))
    tally.audit_s += time.perf_counter() - started
    return tally
