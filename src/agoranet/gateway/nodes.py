"""What the gateway knows about each node: its offer, observed speed, health and bans."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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

    def model(self, name: str) -> ModelOffer | None:
        base = name.partition("@adapter:")[0]
        if self.offer is None:
            return None
        for model in self.offer.models:
            if model.id == base:
                if base != name and not model.adapters.accepted:
                    return None
                return model
        return None

    def banned(self, now: float | None = None) -> bool:
        return (now if now is not None else time.monotonic()) < self.banned_until

    @property
    def success_rate(self) -> float:
        """Laplace-smoothed share of successful requests."""
        return (self.successes + 1) / (self.successes + self.failures + 2)

    def record_success(self, ttft_ms: float, tokens: int, seconds: float) -> None:
        self.successes += 1
        self.ban_level = 0
        self.ttft_ms = _ewma(self.ttft_ms, ttft_ms)
        if tokens > 1 and seconds > 0:
            self.tokens_per_s = _ewma(self.tokens_per_s, tokens / seconds)

    def record_failure(self, reason: str, base_s: float, cap_s: float) -> float:
        """Count a failure and ban the node for a growing time; returns the ban in seconds."""
        self.failures += 1
        ban = float(min(cap_s, base_s * 2.0**self.ban_level))
        self.ban_level += 1
        self.banned_until = time.monotonic() + ban
        self.events.append(f"{time.strftime('%H:%M:%S')} {reason} (banned {ban:.0f}s)")
        del self.events[:-20]
        return ban


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - _EWMA) * old + _EWMA * new
