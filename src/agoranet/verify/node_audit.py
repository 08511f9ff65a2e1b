"""Auditing a node over HTTP: ask fresh challenges, recompute the answers locally.

Each audit draws new challenges: prompts from the tiny model's grammar of
everyday dialogues (some with a system message), and, for the sampled half, a
fresh random seed each, so a node that caches earlier answers (audits' or
anyone's) cannot replay them. Half the challenges are greedy, half sampled (all
greedy when the node's offer states no sampler the auditor replays:
:mod:`~agoranet.verify.offer_terms`); the node must return each token's id and log-probability (``logprobs`` with the
``token_id`` extension). Each answer goes through :func:`audit_answer` against
the reference weights; the node fails the audit if any answer is flagged.

A paid node is paid for its challenges through an
:class:`~agoranet.verify.audit_payment.AuditPayment`: within its budget, each
receipt checked; the audit stops early (and says so) when the next challenge's
worst case would go over it.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from agoranet.api import jsonlimits
from agoranet.engines.base import GenerationRequest, Message
from agoranet.errors import AuditError
from agoranet.proofs.commitments import Commitments
from agoranet.tinymodel.grammar import dialogues
from agoranet.verify.audit import AuditResult, audit_answer
from agoranet.verify.commitment_audit import (
    CommitmentResult,
    audit_with_commitments,
    commitments_in,
)
from agoranet.verify.offer_terms import offer_terms

if TYPE_CHECKING:
    from agoranet.verify.audit_payment import AuditPayment

__all__ = ["PER_ROUND", "GatewayRoute", "NodeAudit", "audit_node", "challenge", "challenges"]

# Challenges per audit round. With fresh prompts, the tiny model's int4 copy is flagged on
# about one answer in five (bench/verify.py), so 10 challenges would miss it about one audit
# in ten; 30 miss it about one in a thousand.
PER_ROUND = 30


@dataclass
class NodeAudit:
    node: str
    model: str
    results: list[AuditResult] = field(default_factory=list)
    commitment_results: list[CommitmentResult] = field(default_factory=list)
    spent: int = 0  # paid to the node for the challenges (base units, by its receipts)
    seeded: bool = True  # half the challenges sampled (the offer states a replayable sampler)
    stopped: str | None = None  # why fewer challenges were asked (the budget ran out)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)

    @property
    def flagged(self) -> int:
        return sum(1 for r in self.results if r.flagged)

    @property
    def passed(self) -> bool:
        return (bool(self.results) and self.flagged == 0
                and all(r.passed for r in self.commitment_results))


def challenge(i: int, prompt: str | Sequence[Message], model: str, max_tokens: int = 48,
              seed: int | None = None, *, seeded: bool = True) -> GenerationRequest:
    """The ``i``-th audit request: greedy when ``i`` is even (or always, without
    ``seeded``), else sampled with ``seed``.

    ``prompt`` is a user message or whole messages; a sampled challenge without a
    ``seed`` gets a fresh random one.
    """
    sampled = seeded and i % 2 == 1
    messages = (Message("user", prompt),) if isinstance(prompt, str) else tuple(prompt)
    if sampled and seed is None:
        seed = secrets.randbelow(2**31)
    return GenerationRequest(model=model, messages=messages, max_tokens=max_tokens,
                             temperature=1.0 if sampled else 0.0,
                             seed=seed if sampled else None, logprobs=True)


def challenges(count: int, model: str, max_tokens: int = 48,
               rng: random.Random | None = None, *, seeded: bool = True
               ) -> list[GenerationRequest]:
    """``count`` fresh challenges: random prompts from the dialogue grammar, random seeds
    (half of them sampled, or none without ``seeded``).

    ``rng`` makes them reproducible (tests); by default they come from the OS's randomness.
    """
    rng = rng or random.SystemRandom()
    drawn = dialogues(count, seed=rng.randrange(2**63))
    return [challenge(i, tuple(Message(m["role"], m["content"]) for m in dialogue[:-1]), model,
                      max_tokens, seed=rng.randrange(2**31), seeded=seeded)
            for i, dialogue in enumerate(drawn)]


def audit_node(node_url: str, model: str, reference: Any, *, rounds: int = 1,
               max_tokens: int = 48, client: httpx.Client | None = None,
               auth: httpx.Auth | None = None, rng: random.Random | None = None,
               commitments: bool | None = None,
               payment: AuditPayment | None = None,
               gateway: GatewayRoute | None = None) -> NodeAudit:
    """Audit ``model`` at ``node_url`` against ``reference`` (a LoadedModel of the same weights).

    Asks ``rounds`` x :data:`PER_ROUND` fresh :func:`challenges` (drawn from ``rng``).
    ``auth`` pays a paid node for the challenges (e.g. the gateway's payer for it).
    With ``commitments`` (by default: when the node's offer has them) every answer
    is asked with its commitments too, and they are checked
    (:func:`~agoranet.verify.commitment_audit.audit_with_commitments`, one reference
    pass for both checks). With ``payment`` a paid node is paid through it (its
    ``auth``), within its budget. With ``gateway`` the challenges go through a gateway
    with a key, pinned to ``node_url``: the gateway pays, within the key's budget (the
    audit stops when the key is refused for its cap), and commitments are not asked.
    """
    if payment is not None:
        auth = payment.auth
    http = client or httpx.Client(timeout=120, auth=auth)
    audit = NodeAudit(node_url, model)
    try:
        terms = offer_terms(http, node_url, model)
        audit.seeded = terms.seeded_replayable
        if gateway is not None:
            commitments = False  # the gateway does not pass a node's proofs on yet
        elif commitments is None:
            commitments = terms.commitments
        drawn = challenges(rounds * PER_ROUND, model, max_tokens, rng, seeded=audit.seeded)
        for number, request in enumerate(drawn):
            request = dataclasses.replace(request, commitments=commitments)
            worst = payment.worst(request) if payment is not None else None
            if payment is not None and worst is not None and not payment.allows(worst):
                audit.stopped = (f"the audit budget ({payment.budget}) allowed {number} of "
                                 f"{len(drawn)} challenges (the next could cost {worst} more "
                                 f"than the {payment.spent} spent)")
                break
            try:
                if gateway is not None:
                    asked = gateway.ask(http, node_url, request)
                    if isinstance(asked, str):  # the key's budget is spent
                        audit.stopped = (f"the key's budget allowed {number} of {len(drawn)} "
                                         f"challenges ({asked})")
                        break
                    ids, logprobs, proofs = asked
                else:
                    ids, logprobs, proofs = _ask(
                        http, node_url, request,
                        payment.paying(worst) if payment is not None else None)
            finally:
                audit.spent = (payment.spent if payment is not None
                               else gateway.spent if gateway is not None else 0)
            if commitments:
                audited, proved = audit_with_commitments(reference, request, ids, logprobs,
                                                         proofs)
                audit.results.append(audited)
                audit.commitment_results.append(proved)
            else:
                audit.results.append(audit_answer(reference, request, ids, logprobs))
    finally:
        if client is None:
            http.close()
    return audit


@dataclass
class GatewayRoute:
    """Challenges asked through a gateway (its ``/v1`` URL) with a gateway key, each
    pinned to the audited node by the request's policy (``agoranet.allow``); ``spent``
    sums what the gateway charged the key for them."""

    url: str
    key: str
    spent: int = 0

    def ask(self, http: httpx.Client, node_url: str, request: GenerationRequest
            ) -> tuple[list[int], list[float], Commitments | None] | str:
        """The answer's token ids and logprobs, or why the key may spend no more."""
        body = _body(request)
        body["agoranet"] = {"allow": [node_url.rstrip("/")]}
        try:
            response = http.post(f"{self.url.rstrip('/')}/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {self.key}"})
            if response.status_code == 429:
                return _message(response)
            if response.status_code in (401, 403):
                raise AuditError(f"the gateway refused the key: {_message(response)}")
            if response.is_error:
                raise AuditError(f"the gateway could not ask {node_url}: "
                                 f"{_message(response)}")
            answer = jsonlimits.loads(response.content, what="the answer")
            summary = answer.get("agoranet") or {}
            self.spent += int(summary.get("amount") or 0)
            served = [str(n).rstrip("/") for n in summary.get("nodes") or []]
        except (httpx.HTTPError, TypeError, ValueError, AttributeError) as exc:
            raise AuditError(f"the gateway did not answer an audit challenge: {exc}") from exc
        if served != [node_url.rstrip("/")]:
            raise AuditError(f"the gateway answered from {served or 'no node'}, not "
                             f"{node_url}: it does not serve the model there")
        return (*_answer_tokens(node_url, answer), None)


def _body(request: GenerationRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model, "max_tokens": request.max_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages or ()],
        "temperature": request.temperature, "logprobs": True,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    return body


def _ask(http: httpx.Client, node_url: str, request: GenerationRequest,
         auth: httpx.Auth | None = None
         ) -> tuple[list[int], list[float], Commitments | None]:
    """Ask one challenge; ``auth`` pays it (None: the client's own auth)."""
    body = _body(request)
    if request.commitments:
        body["agoranet"] = {"commitments": True}
    try:
        response = http.post(f"{node_url.rstrip('/')}/chat/completions", json=body,
                             auth=httpx.USE_CLIENT_DEFAULT if auth is None else auth)
        if response.status_code == 402:
            raise AuditError(f"{node_url} sells for payment and the audit could not pay it "
                             f"({_message(response)}): give a wallet (--rpc-url, --keystore) "
                             "and an audit --budget")
        response.raise_for_status()
        answer = jsonlimits.loads(response.content, what="the answer")
    except (httpx.HTTPError, TypeError, ValueError) as exc:
        raise AuditError(f"{node_url} did not answer an audit challenge: {exc}") from exc
    return (*_answer_tokens(node_url, answer), commitments_in(answer))


def _answer_tokens(node_url: str, answer: Any) -> tuple[list[int], list[float]]:
    """An answer's token ids and logprobs (token ids are an agoranet extension)."""
    try:
        content = answer["choices"][0]["logprobs"]["content"]
        if any(entry.get("token_id") is None for entry in content):
            raise AuditError(f"{node_url} returns no token ids: it cannot be audited")
        return ([int(e["token_id"]) for e in content],
                [float(e["logprob"]) for e in content])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AuditError(f"{node_url} did not answer an audit challenge: {exc}") from exc


def _message(response: httpx.Response) -> str:
    try:
        return str(jsonlimits.loads(response.content, what="an error")["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
