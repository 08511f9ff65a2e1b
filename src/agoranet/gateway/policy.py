"""The owner's routing policy: price caps, allowed and banned nodes, what to prefer.

Set in a config file (JSON or TOML) for the gateway, and per request through the
``agoranet`` extension field of a chat request, which narrows the file's policy.
Prices are integers in base units per million tokens.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agoranet.api import jsonlimits
from agoranet.errors import ConfigError, InvalidRequestError

__all__ = ["Policy", "load_policy"]


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_price_in: int | None = Field(default=None, ge=0)
    max_price_out: int | None = Field(default=None, ge=0)
    allow: list[str] | None = None  # node URLs; None allows all
    deny: list[str] = Field(default_factory=list)
    prefer: Literal["cheapest", "fastest", "balanced"] = "balanced"
    max_attempts: int = Field(default=4, ge=1, le=16)
    first_token_timeout_s: float = Field(default=30.0, gt=0)
    # Once the answer has started, the longest wait for its next content token (keep-alive
    # comments and empty events are not progress); a node past it is failed over.
    token_timeout_s: float = Field(default=30.0, gt=0)
    # Hedging: also ask the next node if the first has produced no token by then.
    hedge_after_ms: int | None = Field(default=None, ge=1)
    ban_base_s: float = Field(default=5.0, gt=0)
    ban_cap_s: float = Field(default=600.0, gt=0)
    # Ask nodes for TOPLOC-style commitments (at their offer's price); only nodes that
    # offer them are used, and each node's proofs come back in the answer's summary.
    commitments: bool = False
    # Set when a request tightens a deadline below the gateway's: a node that misses it is
    # failed over but not blamed (the client chose the deadline), and a request that no
    # node answers in time gets a 504.
    own_deadlines: bool = False

    def narrowed(self, extension: object) -> Policy:
        """This policy with a request's ``agoranet`` field applied; it may only narrow."""
        if extension is None:
            return self
        if not isinstance(extension, dict):
            raise InvalidRequestError("'agoranet' must be an object of policy fields",
                                      param="agoranet")
        if not extension:
            return self
        try:
            asked = Policy.model_validate({**self.model_dump(), **extension})
        except ValidationError as exc:
            raise InvalidRequestError(f"invalid 'agoranet' policy: {exc.errors()[0]['msg']}",
                                      param="agoranet") from exc
        return asked.model_copy(update={
            "max_price_in": _min(self.max_price_in, asked.max_price_in),
            "max_price_out": _min(self.max_price_out, asked.max_price_out),
            "deny": sorted({*self.deny, *asked.deny}),
            "allow": _intersect(self.allow, asked.allow),
            "commitments": self.commitments or asked.commitments,
            "first_token_timeout_s": min(self.first_token_timeout_s,
                                         asked.first_token_timeout_s),
            "token_timeout_s": min(self.token_timeout_s, asked.token_timeout_s),
            "own_deadlines": self.own_deadlines or asked.own_deadlines
            or asked.first_token_timeout_s < self.first_token_timeout_s
            or asked.token_timeout_s < self.token_timeout_s,
            # Bans are the gateway's judgement of a node for every client: not a request's.
            "ban_base_s": self.ban_base_s,
            "ban_cap_s": self.ban_cap_s,
        })


def _min(a: int | None, b: int | None) -> int | None:
    values = [v for v in (a, b) if v is not None]
    return min(values) if values else None


def _intersect(a: list[str] | None, b: list[str] | None) -> list[str] | None:
    if a is None or b is None:
        return b if a is None else a
    return [u for u in a if u in b]


def load_policy(path: Path | None) -> Policy:
    if path is None:
        return Policy()
    try:
        raw = path.read_text()
        data = tomllib.loads(raw) if path.suffix == ".toml" else jsonlimits.loads(raw,
                                                                                  what=str(path))
        return Policy.model_validate(data)
    except (OSError, ValueError, RecursionError, ValidationError) as exc:
        raise ConfigError(f"cannot read the policy file {path}: {exc}") from exc
