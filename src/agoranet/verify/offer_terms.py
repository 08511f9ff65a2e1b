"""What a node's published offer says about auditing one of its models.

An auditor reads the offer at ``/.well-known/agoranet`` once per audit: whether the
model's answers can carry our commitments, and which sampler the node states for
seeded sampling. Only answers drawn with a sampler the auditor can replay
(:data:`~agoranet.engines.sampling.SAMPLER_ID`) can be checked token by token when
sampled; a node that states none (an engine sampling with its own kernels, or a
plain OpenAI server with no offer) is audited on greedy answers only.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from agoranet.api import jsonlimits
from agoranet.engines.sampling import SAMPLER_ID
from agoranet.market import ModelName
from agoranet.proofs.commitments import ALGORITHM

__all__ = ["OfferTerms", "offer_terms"]


@dataclass(frozen=True, slots=True)
class OfferTerms:
    """The audit-relevant terms of one model in a node's offer."""

    commitments: bool = False  # answers can carry commitments of our algorithm
    sampler: str | None = None  # the stated sampling algorithm, if any

    @property
    def seeded_replayable(self) -> bool:
        """Whether seeded answers can be replayed (the node states our sampler)."""
        return self.sampler == SAMPLER_ID


def offer_terms(http: httpx.Client, node_url: str, model: str) -> OfferTerms:
    """The terms the node at ``node_url`` publishes for ``model`` (its base model);
    none (the defaults) when the node has no readable offer or does not list it."""
    root = node_url.rstrip("/").removesuffix("/v1")
    try:
        response = http.get(f"{root}/.well-known/agoranet", timeout=10.0)
        response.raise_for_status()
        offer = jsonlimits.loads(response.content, what="the offer")
    except (httpx.HTTPError, ValueError):  # no offer (a plain OpenAI server)
        return OfferTerms()
    base = ModelName.base_of(model)
    for entry in offer.get("models", []) if isinstance(offer, dict) else []:
        if isinstance(entry, dict) and entry.get("id") == base:
            terms = entry.get("commitments")
            terms = terms if isinstance(terms, dict) else {}
            sampler = entry.get("sampler")
            return OfferTerms(
                commitments=bool(terms.get("offered")) and terms.get("algorithm") == ALGORITHM,
                sampler=sampler if isinstance(sampler, str) else None,
            )
    return OfferTerms()
