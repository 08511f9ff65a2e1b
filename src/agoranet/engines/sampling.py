"""The sampler: greedy at temperature 0, else temperature and nucleus (top-p) sampling.

The algorithm is fixed and stated so a verifier can recompute it: logits in
float32, divided by the temperature, softmax, the smallest set of tokens whose
probability reaches ``top_p`` kept (ties by token id), then one draw with
``torch.multinomial`` from a ``torch.Generator`` seeded with the request's seed.
A temperature so small that the divided logits overflow float32 (1e-200) is
greedy, the limit of sampling as the temperature goes to 0.
Reported logprobs are the model's own ``log_softmax`` before any of that.

A model never calls a tool it was not offered: when a request offers no tools (or says
``tool_choice: "none"``), the tokens that are exactly a known tool-call opening marker
(:data:`CALL_OPENERS`, where the vocabulary has one as a token of its own) are left out
before anything else (:func:`unoffered_call_tokens`). The rule reads only the request
and the vocabulary, so an auditor with the reference weights applies it too.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import torch

__all__ = ["CALL_OPENERS", "SAMPLER_ID", "Sampler", "TopCandidates", "call_opener_ids",
           "offers_tools", "unoffered_call_tokens"]

SAMPLER_ID = "agoranet-torch-multinomial-v1"
# What opens a tool call in the formats agoranet parses (Hermes/Qwen, Llama 3).
CALL_OPENERS: Final = ("<tool_call>", "<|python_tag|>")


def call_opener_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids of the tokens that are exactly one of :data:`CALL_OPENERS` in this
    vocabulary (a marker spelled with several tokens is not one of them)."""
    found: set[int] = set()
    for marker in CALL_OPENERS:
        ids = tokenizer.encode(marker, add_special_tokens=False)
        if len(ids) == 1:
            found.add(int(ids[0]))
    return tuple(sorted(found))


def offers_tools(tools: Sequence[Any], tool_choice: object) -> bool:
    """Whether a request offers the model a tool to call."""
    return bool(tools) and tool_choice != "none"


def unoffered_call_tokens(openers: tuple[int, ...], tools: Sequence[Any],
                          tool_choice: object) -> tuple[int, ...]:
    """The tokens left out of sampling for a request: the call openers when it offers no
    tool to call, else none."""
    return () if offers_tools(tools, tool_choice) else openers


@dataclass(frozen=True, slots=True)
class TopCandidates:
    logprob: float
    top_ids: list[int]
    top_logprobs: list[float]


class Sampler:
    """Chooses the next token for one sequence; owns that sequence's random state."""

    def __init__(self, temperature: float, top_p: float, seed: int | None,
                 banned: tuple[int, ...] = ()) -> None:
        self.temperature = temperature
        self.banned = list(banned)  # token ids never chosen (see the module's docstring)
        self.top_p = top_p
        self.seed = seed if seed is not None else secrets.randbits(63)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self.seed % (2**63))

    def choose(self, logits: torch.Tensor) -> int:
        """Pick a token id from one row of logits (any device)."""
        logits = self.allowed(logits)
        if self.temperature == 0.0:
            return int(torch.argmax(logits).item())
        scaled = logits / self.temperature
        if not bool(torch.isfinite(scaled.max())):  # so cold it overflows: its limit, greedy
            return int(torch.argmax(logits).item())
        probs = torch.softmax(scaled, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True, stable=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop = cumulative - sorted_probs >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        draw = torch.multinomial(probs.cpu(), 1, generator=self._generator)
        return int(draw.item())

    def allowed(self, logits: torch.Tensor) -> torch.Tensor:
        """One row of logits, float32, with the banned tokens out of reach."""
        logits = logits.float()
        if self.banned:
            logits = logits.clone()
            logits[self.banned] = float("-inf")
        return logits

    @staticmethod
    def candidates(logits: torch.Tensor, token_id: int, k: int) -> TopCandidates:
        """Log-probability of ``token_id`` and the ``k`` most likely tokens."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        chosen = float(logprobs[token_id].item())
        if k <= 0:
            return TopCandidates(chosen, [], [])
        values, ids = torch.topk(logprobs, k)
        return TopCandidates(chosen, [int(i) for i in ids.tolist()], values.tolist())
