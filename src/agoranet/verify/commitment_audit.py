"""Checking a node's commitments with one prefill of reference weights.

The verifier runs the reference model once over prompt + answer (all but the
answer's last token, which the node never fed), cuts the last hidden state into
the chunks the node committed to, and checks each proof
(:func:`~agoranet.proofs.commitments.check_chunk`). Decision rule: the answer
passes when the commitments use our algorithm with its chunk (32) and k (128),
there is exactly one proof per chunk, and every chunk passes the
:class:`Thresholds`; one failing chunk fails it. Commitments bind the hidden states (weights and inputs), not the sampling:
pair them with :func:`~agoranet.verify.audit.audit_answer` to bind the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import torch

from agoranet.engines.base import GenerationRequest
from agoranet.engines.prompt import encode_prompt
from agoranet.proofs.commitments import (
    ALGORITHM,
    CHUNK,
    DEFAULT_THRESHOLDS,
    TOP_K,
    ChunkCheck,
    Commitments,
    Thresholds,
    check_chunk,
    chunks,
    expected_proofs,
)
from agoranet.verify.audit import AuditResult, banned_tokens, reference_pass, score_answer
from agoranet.verify.offer_terms import offer_terms

__all__ = [
    "CommitmentResult",
    "audit_with_commitments",
    "check_hidden",
    "commitments_in",
    "last_hidden",
    "offers_commitments",
    "verify_commitments",
]


@dataclass(frozen=True)
class CommitmentResult:
    tokens: int  # answer tokens covered
    checks: tuple[ChunkCheck, ...]
    reason: str | None  # why it failed, None when it passed

    @property
    def passed(self) -> bool:
        return self.reason is None

    @property
    def failed_chunks(self) -> int:
        return sum(1 for c in self.checks if not c.passed)


def last_hidden(reference: Any, ids: list[int]) -> torch.Tensor:
    """The last hidden state ``[tokens, hidden]`` of ``reference`` (a LoadedModel) over ``ids``."""
    _, hidden = reference_pass(reference, ids, hidden=True)
    assert hidden is not None
    return hidden


def audit_with_commitments(reference: Any, request: GenerationRequest, token_ids: list[int],
                           reported_logprobs: list[float] | None,
                           commitments: Commitments | None) -> tuple[AuditResult,
                                                                     CommitmentResult]:
    """The seeded-sampling audit and the commitment check of one answer, from a single
    reference pass (its logits score the tokens, its hidden states check the proofs)."""
    prompt = encode_prompt(reference.tokenizer, request)
    logits, hidden = reference_pass(reference, prompt + token_ids, hidden=True)
    audited = score_answer(logits[len(prompt) - 1 : len(prompt) - 1 + len(token_ids)], request,
                           token_ids, reported_logprobs, banned=banned_tokens(reference, request))
    if commitments is None:
        return audited, CommitmentResult(len(token_ids), (), "no commitments returned")
    if not token_ids:
        return audited, CommitmentResult(0, (), "no answer tokens")
    assert hidden is not None  # rows of prompt + answer; the answer's last token was never fed
    return audited, check_hidden(hidden[:-1], len(prompt), len(token_ids), commitments)


def check_hidden(hidden: torch.Tensor, prompt_tokens: int, completion_tokens: int,
                 commitments: Commitments, thresholds: Thresholds = DEFAULT_THRESHOLDS
                 ) -> CommitmentResult:
    """Check ``commitments`` against recomputed hidden rows (prompt, then decode steps)."""
    if (commitments.algorithm, commitments.chunk, commitments.k) != (ALGORITHM, CHUNK, TOP_K):
        return CommitmentResult(
            completion_tokens, (),
            f"commitments {commitments.algorithm!r} with chunk {commitments.chunk} and k "
            f"{commitments.k}; {ALGORITHM!r} means chunk {CHUNK} and k {TOP_K}")
    wanted = expected_proofs(completion_tokens, commitments.chunk)
    if len(commitments.proofs) != wanted:
        return CommitmentResult(completion_tokens, (),
                                f"{len(commitments.proofs)} proofs for {completion_tokens} "
                                f"tokens; expected {wanted}")
    checks = tuple(
        check_chunk(rows, proof, commitments.k, thresholds)
        for rows, proof in zip(chunks(hidden, prompt_tokens, commitments.chunk),
                               commitments.proofs, strict=True)
    )
    failed = [i for i, c in enumerate(checks) if not c.passed]
    reason = f"chunks {failed} do not match the reference" if failed else None
    return CommitmentResult(completion_tokens, checks, reason)


def verify_commitments(reference: Any, request: GenerationRequest, token_ids: list[int],
                       commitments: Commitments, thresholds: Thresholds = DEFAULT_THRESHOLDS
                       ) -> CommitmentResult:
    """Check a node's ``commitments`` for its answer ``token_ids`` to ``request``."""
    prompt = encode_prompt(reference.tokenizer, request)
    if not token_ids:
        return CommitmentResult(0, (), "no answer tokens")
    hidden = last_hidden(reference, prompt + token_ids[:-1])
    return check_hidden(hidden, len(prompt), len(token_ids), commitments, thresholds)


def offers_commitments(http: httpx.Client, node_url: str, model: str) -> bool:
    """Whether the node's published offer says ``model``'s answers can carry our commitments."""
    return offer_terms(http, node_url, model).commitments


def commitments_in(response: object) -> Commitments | None:
    """The commitments in a chat/completions response body (or stream chunk), if any."""
    extension = response.get("agoranet") if isinstance(response, dict) else None
    found = extension.get("commitments") if isinstance(extension, dict) else None
    return None if found is None else Commitments.from_wire(found)
