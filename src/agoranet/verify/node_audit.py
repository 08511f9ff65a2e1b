"""Auditing a node over HTTP: ask fixed challenge prompts, recompute the answers locally.

Half the challenges are greedy, half sampled with a seed the auditor picks; the
node must return each token's id and log-probability (``logprobs`` with the
``token_id`` extension). Each answer goes through :func:`audit_answer` against
the reference weights; the node fails the audit if any answer is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from agoranet.engines.base import GenerationRequest, Message
from agoranet.errors import AuditError
from agoranet.verify.audit import AuditResult, audit_answer

__all__ = ["CHALLENGES", "NodeAudit", "audit_node", "challenge"]

CHALLENGES = [
    "Tell me a short story.", "What did Anna do today?", "Tell me about the park.",
    "Where is the cat?", "What should I cook for dinner?", "How is the weather today?",
    "Tell me about the ship.", "Hello!", "What did Omar do yesterday?", "Tell me a story.",
]


@dataclass
class NodeAudit:
    node: str
    model: str
    results: list[AuditResult] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)

    @property
    def flagged(self) -> int:
        return sum(1 for r in self.results if r.flagged)

    @property
    def passed(self) -> bool:
        return bool(self.results) and self.flagged == 0


def challenge(i: int, prompt: str, model: str, max_tokens: int = 48,
              seed_base: int = 1000) -> GenerationRequest:
    """The ``i``-th audit request: greedy when ``i`` is even, else sampled with a set seed."""
    sampled = i % 2 == 1
    return GenerationRequest(model=model, messages=(Message("user", prompt),),
                             max_tokens=max_tokens, temperature=1.0 if sampled else 0.0,
                             seed=seed_base + i if sampled else None, logprobs=True)


def audit_node(node_url: str, model: str, reference: Any, *, rounds: int = 1,
               max_tokens: int = 48, client: httpx.Client | None = None,
               auth: httpx.Auth | None = None) -> NodeAudit:
    """Audit ``model`` at ``node_url`` against ``reference`` (a LoadedModel of the same weights).

    ``auth`` pays a paid node for the challenges (e.g. the gateway's payer for it).
    """
    http = client or httpx.Client(timeout=120, auth=auth)
    audit = NodeAudit(node_url, model)
    try:
        for i in range(rounds * len(CHALLENGES)):
            request = challenge(i, CHALLENGES[i % len(CHALLENGES)], model, max_tokens)
            ids, logprobs = _ask(http, node_url, request)
            audit.results.append(audit_answer(reference, request, ids, logprobs))
    finally:
        if client is None:
            http.close()
    return audit


def _ask(http: httpx.Client, node_url: str,
         request: GenerationRequest) -> tuple[list[int], list[float]]:
    body: dict[str, Any] = {
        "model": request.model, "max_tokens": request.max_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages or ()],
        "temperature": request.temperature, "logprobs": True,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    try:
        response = http.post(f"{node_url.rstrip('/')}/chat/completions", json=body)
        response.raise_for_status()
        content = response.json()["choices"][0]["logprobs"]["content"]
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        raise AuditError(f"{node_url} did not answer an audit challenge: {exc}") from exc
    if any(entry.get("token_id") is None for entry in content):
        raise AuditError(f"{node_url} returns no token ids: it cannot be audited")
    return [int(e["token_id"]) for e in content], [float(e["logprob"]) for e in content]
