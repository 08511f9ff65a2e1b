"""Auditing an answer: recompute each step with reference weights and the stated sampler.

A node returns, for each generated token, its id (``token_id`` in the logprobs,
an agoranet extension) and its log-probability. The auditor runs one forward
pass of the reference model over prompt + answer and, at every step:

- replays the node's stated sampler (``agoranet-torch-multinomial-v1``: greedy at
  temperature 0, else a ``torch.Generator`` seeded with the request's seed) on
  the reference logits, and checks that it picks the node's token. Steps where
  the reference is nearly indifferent (the chosen token's probability within
  ``margin`` of another's, under greedy) are not counted, since honest numerics
  may differ there;
- compares the node's reported log-probability with the reference one.

An answer is flagged when any confident step picks another token, or when the
reported log-probabilities drift from the reference beyond ``logprob_tolerance``
on average. Both thresholds are stated, so the false-positive rate can be
measured (see tests/verify).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agoranet.engines.base import GenerationRequest
from agoranet.engines.prompt import encode_prompt
from agoranet.engines.sampling import Sampler, call_opener_ids, unoffered_call_tokens

__all__ = ["AuditResult", "audit_answer", "banned_tokens", "reference_pass", "score_answer"]


@dataclass(frozen=True)
class AuditResult:
    tokens: int
    counted: int  # steps confident enough to judge
    mismatches: int  # confident steps where the reference sampler picks another token
    mean_logprob_error: float  # |reported - reference| averaged over steps
    flagged: bool


def audit_answer(
    reference: Any,
    request: GenerationRequest,
    token_ids: list[int],
    reported_logprobs: list[float] | None = None,
    *,
    margin: float = 0.05,
    logprob_tolerance: float = 0.05,
) -> AuditResult:
    """Audit one answer (its token ids) to ``request`` against ``reference`` (a LoadedModel)."""
    prompt = encode_prompt(reference.tokenizer, request)
    logits, _ = reference_pass(reference, prompt + token_ids)
    return score_answer(logits[len(prompt) - 1 : len(prompt) - 1 + len(token_ids)], request,
                        token_ids, reported_logprobs, margin=margin,
                        logprob_tolerance=logprob_tolerance,
                        banned=banned_tokens(reference, request))


def banned_tokens(reference: Any, request: GenerationRequest) -> tuple[int, ...]:
    """The tokens the stated sampler leaves out for ``request`` (tool-call openers when
    it offers no tools), in the reference's vocabulary."""
    return unoffered_call_tokens(call_opener_ids(reference.tokenizer), request.tools,
                                 request.tool_choice)


def reference_pass(reference: Any, ids: list[int], *,
                   hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass of ``reference`` over ``ids``: the logits ``[tokens, vocab]`` (float)
    and, with ``hidden``, the last hidden state ``[tokens, hidden]`` (what the LM head reads)."""
    tokens = torch.tensor([ids], device=reference.device)
    with torch.inference_mode():
        output = reference.model(input_ids=tokens, output_hidden_states=hidden)
    states: torch.Tensor | None = output.hidden_states[-1][0] if hidden else None
    return output.logits[0].float(), states


def score_answer(
    steps: torch.Tensor,
    request: GenerationRequest,
    token_ids: list[int],
    reported_logprobs: list[float] | None = None,
    *,
    margin: float = 0.05,
    logprob_tolerance: float = 0.05,
    banned: tuple[int, ...] = (),
) -> AuditResult:
    """The verdict on ``token_ids`` given the reference logits ``steps`` that chose each one
    (``banned``: the tokens the stated sampler left out, see :func:`banned_tokens`)."""
    sampler = Sampler(request.temperature, request.top_p, request.seed, banned)
    counted = mismatches = 0
    errors: list[float] = []
    for position, token in enumerate(token_ids):
        row = steps[position]
        picked = sampler.choose(row)
        logprobs = torch.log_softmax(row, dim=-1)  # reported ones are before the sampler
        if reported_logprobs is not None:
            errors.append(abs(reported_logprobs[position] - float(logprobs[token])))
        if request.temperature == 0.0:  # confidence among the tokens it could choose
            top2 = torch.topk(torch.softmax(sampler.allowed(row), dim=-1), 2).values
            if float(top2[0] - top2[1]) < margin:
                continue
        counted += 1
        mismatches += int(picked != token)
    drift = sum(errors) / len(errors) if errors else 0.0
    flagged = mismatches > 0 or drift > logprob_tolerance
    return AuditResult(len(token_ids), counted, mismatches, drift, flagged)
