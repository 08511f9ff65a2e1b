"""Ranking nodes for one request: expected cost, observed speed, reputation, policy.

Each preference divides its measure by the node's reliability
(``NodeState.reliability``: the reputation score, 1/2 for a node with no history),
so a node with a worse record must be that much cheaper or faster to come first;
banned nodes (failed audits included) are not ranked at all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.market import ModelName, cost
from agoranet.registry.offer import ModelOffer

__all__ = ["Candidate", "cost_micro", "expected_cost", "is_adapter", "rank"]

Candidate = tuple[NodeState, ModelOffer]

_UNKNOWN_TTFT_MS = 200.0  # an unmeasured node is assumed fair, so it gets tried


def cost_micro(model: ModelOffer, prompt_tokens: int, completion_tokens: int, *,
               adapter: bool = False, commitments: bool = False) -> int:
    """Price of a request in millionths of a base unit (exact, for comparing nodes); the
    adapter surcharge counts only for a request to an adapter (``MODEL@adapter:...``), the
    commitments price only for a request that asks for them."""
    prices = model.price_book().per_token(adapter=adapter, commitments=commitments)
    return prompt_tokens * prices.input_per_million + completion_tokens * prices.output_per_million


def expected_cost(model: ModelOffer, prompt_tokens: int, completion_tokens: int, *,
                  adapter: bool = False, commitments: bool = False) -> int:
    """Price of a request in base units, rounded up (integers only)."""
    return cost(model.price_book().per_token(adapter=adapter, commitments=commitments),
                prompt_tokens, completion_tokens)


def is_adapter(model_name: str) -> bool:
    """Whether ``model_name`` asks for a LoRA adapter on its base model."""
    return ModelName.names_adapter(model_name)


def _as_float(value: int) -> float:
    """``value`` as a float for ordering; inf beyond a float's range (never OverflowError)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _eligible(node: NodeState, model: ModelOffer, policy: Policy, now: float) -> bool:
    if node.banned(now) or node.url in policy.deny:
        return False
    if policy.allow is not None and node.url not in policy.allow:
        return False
    if policy.commitments and not model.commitments.offered:
        return False
    if policy.max_price_in is not None and model.price.input_per_million > policy.max_price_in:
        return False
    return policy.max_price_out is None or model.price.output_per_million <= policy.max_price_out


def rank(nodes: Iterable[NodeState], model_name: str, prompt_tokens: int, max_tokens: int,
         policy: Policy, needs: frozenset[str] = frozenset()) -> list[Candidate]:
    """Eligible nodes serving ``model_name`` (with every capability in ``needs``), best
    first."""
    now = time.monotonic()
    adapter = is_adapter(model_name)
    found: list[Candidate] = []
    for node in nodes:
        model = node.model(model_name)
        if model is not None and model.offers(needs) and _eligible(node, model, policy, now):
            found.append((node, model))

    def key(candidate: Candidate) -> tuple[float, float, str]:
        node, model = candidate
        # exact integers, compared as floats: a huge max_tokens or price ranks last, not a 500
        cost = _as_float(cost_micro(model, prompt_tokens, max_tokens, adapter=adapter,
                                    commitments=policy.commitments))
        ttft = node.ttft_ms if node.ttft_ms is not None else _UNKNOWN_TTFT_MS
        seconds = ttft / 1000 + _as_float(max_tokens) / (node.tokens_per_s or 100.0)
        reliability = node.reliability
        if policy.prefer == "cheapest":
            return (cost / reliability, seconds, node.url)
        if policy.prefer == "fastest":
            return (seconds / reliability, cost, node.url)
        return ((cost + 1) * math.sqrt(seconds) / reliability, cost, node.url)

    return sorted(found, key=key)
