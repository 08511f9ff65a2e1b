"""What the gateway knows about each node: its offer, observed speed, health and bans.

With a :class:`~agoranet.gateway.reputation.Reputation` store attached, every
success, failure and audit is also recorded there under the node's identity, and
the store's score and persistent bans (failed audits, trusted imported verdicts)
apply; without one, the node's own counts since start give a Laplace success rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agoranet.gateway.reputation import (
    AUDIT_BAN_CAP_S,
    AUDIT_BAN_S,
    DISPUTE_BAN_S,
    Ban,
    EventKind,
    Reputation,
    failure_kind,
)
from agoranet.market import ModelName
from agoranet.registry.offer import ModelOffer, Offer

if TYPE_CHECKING:
    from agoranet.registry.onchain import RegistryEntry

__all__ = ["NodeState"]

_EWMA = 0.3  # weight of the newest observation in moving averages


@dataclass
class NodeState:
    """One node (``url`` is its OpenAI base, ending in ``/v1``)."""

    url: str
    offer: Offer | None = None
    registered: RegistryEntry | None = None  # set when discovered through the registry
    offer_error: str | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    successes: int = 0
    failures: int = 0
    banned_until: float = 0.0
    ban_level: int = 0
    events: list[str] = field(default_factory=list)
    audits: list[str] = field(default_factory=list)  # verdicts of background audits
    reputation: Reputation | None = None  # the gateway's persistent event store, if any
    public_adapters: tuple[str, ...] = ()  # ``BASE@adapter:<id>`` its /v1/models lists

    @property
    def identity(self) -> str:
        """Who the node is for reputation: the address that registered its URL on chain
        (a copied offer cannot claim it), else its URL."""
        if self.registered is not None:
            return self.registered.provider
        return self.url

    def offered(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.offer.models) if self.offer is not None else ()

    def model(self, name: str) -> ModelOffer | None:
        base = ModelName.base_of(name)
        if self.offer is None:
            return None
        for model in self.offer.models:
            if model.id == base:
                if base != name and not model.adapters.accepted:
                    return None
                return model
        return None

    def banned(self, now: float | None = None) -> bool:
        """Banned now (``now`` is ``time.monotonic()``): a failure's short ban, or a
        persistent one from the reputation store."""
        if (now if now is not None else time.monotonic()) < self.banned_until:
            return True
        return self.lasting_ban() is not None

    def lasting_ban(self) -> Ban | None:
        """A ban from the reputation store (failed audits, trusted lists), if one runs."""
        if self.reputation is None:
            return None
        return self.reputation.ban(self.identity, self.url)

    @property
    def success_rate(self) -> float:
        """Laplace-smoothed share of successful requests."""
        return (self.successes + 1) / (self.successes + self.failures + 2)

    @property
    def reliability(self) -> float:
        """The ranking's trust in this node, in (0, 1); 1/2 for a node with no history."""
        if self.reputation is None:
            return self.success_rate
        return self.reputation.score(self.identity)

    def record_success(self, ttft_ms: float, tokens: int, seconds: float) -> None:
        self.successes += 1
        self._log(EventKind.SUCCESS)
        self.ban_level = 0
        self.ttft_ms = _ewma(self.ttft_ms, ttft_ms)
        if tokens > 1 and seconds > 0:
            self.tokens_per_s = _ewma(self.tokens_per_s, tokens / seconds)

    def record_failure(self, reason: str, base_s: float, cap_s: float,
                       kind: EventKind | None = None) -> float:
        """Count a failure and ban the node for a growing time; returns the ban in seconds.

        ``kind`` defaults to :func:`~agoranet.gateway.reputation.failure_kind` of ``reason``
        (a receipt disagreement if the reason names a receipt)."""
        self.failures += 1
        ban = float(min(cap_s, base_s * 2.0**self.ban_level))
        self.ban_level += 1
        self.banned_until = time.monotonic() + ban
        self._note(f"{reason} (banned {ban:.0f}s)")
        self._log(kind or failure_kind(reason), detail=reason)
        return ban

    def record_audit(self, model: str, *, passed: bool, answers: int, flagged: int,
                     tokens: int) -> str:
        """Record an audit's verdict; a failed one bans the node (persistently with a
        store: see :mod:`agoranet.gateway.reputation`). Returns the verdict line."""
        verdict = (f"{'passed' if passed else 'FAILED'}: {flagged}/{answers} answers flagged, "
                   f"{tokens} tokens")
        self.audits.append(verdict)
        del self.audits[:-20]
        self._log(EventKind.AUDIT_PASSED if passed else EventKind.AUDIT_FAILED, model=model,
                  tokens=tokens, flagged=flagged, detail=verdict)
        if not passed:
            record = self.reputation.record(self.identity) if self.reputation else None
            ban = record.ban() if record is not None else None
            seconds = (ban.until - time.time()) if ban is not None else AUDIT_BAN_S
            seconds = max(0.0, min(seconds, AUDIT_BAN_CAP_S))
            self.banned_until = max(self.banned_until, time.monotonic() + seconds)
            self._note(f"failed an audit of the weights it serves (banned {seconds:.0f}s)")
        return verdict

    def record_dispute(self, detail: str) -> float:
        """The node claimed a charge no receipt backs: a receipt disagreement with a long
        ban (persistent with a store: see :mod:`agoranet.gateway.reputation`); the ban in
        seconds."""
        self.failures += 1
        self._log(EventKind.DISPUTE, detail=detail)
        record = self.reputation.record(self.identity) if self.reputation else None
        ban = record.ban() if record is not None else None
        seconds = (ban.until - time.time()) if ban is not None else DISPUTE_BAN_S
        seconds = max(0.0, min(seconds, AUDIT_BAN_CAP_S))
        self.banned_until = max(self.banned_until, time.monotonic() + seconds)
        self._note(f"claimed a charge no receipt backs (banned {seconds:.0f}s): {detail}")
        return seconds

    def record_unauditable(self, model: str, reason: str, kind: EventKind | None = None) -> None:
        """An audit could not be done (no answer, no token ids, a bad receipt)."""
        self.audits.append(f"could not audit: {reason}")
        del self.audits[:-20]
        self._log(kind or EventKind.UNAUDITABLE, model=model, detail=f"could not audit: {reason}")

    def note(self, text: str) -> None:
        """Note something that happened with this node (not a failure), e.g. its channel
        was reopened; shown in ``/agoranet/nodes``."""
        self._note(text)

    def _note(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self.events[:-20]

    def _log(self, kind: EventKind, *, model: str = "", tokens: int = 0, flagged: int = 0,
             detail: str = "") -> None:
        if self.reputation is not None:
            self.reputation.add(self.identity, self.url, kind, models=self.offered(), model=model,
                                tokens=tokens, flagged=flagged, detail=detail)


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - _EWMA) * old + _EWMA * new
