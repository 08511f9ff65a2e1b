"""What a request's gateway key allows: its models, its policy, its budget chain.

A request carries its key as ``Authorization: Bearer agn-...``; :func:`authenticate`
turns it into a :class:`KeyAccess` (or a 401) before the body is read or a node is
asked. The key's models and policy, and every ancestor's, all apply, so a key is
never wider than its parent. Its :class:`KeyedBudget` reserves each attempt's worst
case against the key's chain in the key store, then against the owner's global
budget; the reservation is released exactly once, without an await.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final

from starlette.requests import Request

from agoranet.errors import InvalidRequestError, PermissionDeniedError
from agoranet.gateway.budget import Budget, Reservation
from agoranet.gateway.keystore import KeyRecord, KeyStore
from agoranet.gateway.policy import Policy
from agoranet.gateway.tool_limits import TOOL_FIELDS, ToolLimits, check_tool_fields

__all__ = ["POLICY_FIELDS", "KeyAccess", "KeyReservation", "KeyedBudget", "authenticate",
           "bearer", "check_key_policy"]

# The policy fields a key may carry: each narrows (prices, nodes) or only steers (prefer);
# and what it may buy from the tool market (agoranet.gateway.tool_limits).
POLICY_FIELDS: Final = frozenset({"max_price_in", "max_price_out", "prefer", "allow", "deny",
                                  "commitments", *TOOL_FIELDS})


def bearer(request: Request) -> str | None:
    """The secret of ``Authorization: Bearer ...``, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return secret.strip()


def authenticate(store: KeyStore, request: Request) -> KeyAccess:
    """The request's key with its chain, or a 401 (nothing read, nothing charged)."""
    return KeyAccess(store, store.authenticate(bearer(request)))


def check_key_policy(policy: object) -> dict[str, Any]:
    """A key's policy fields, validated (400 for an unknown field or a bad value)."""
    if policy is None:
        return {}
    if not isinstance(policy, dict):
        raise InvalidRequestError("'policy' must be an object of policy fields",
                                  param="policy")
    unknown = sorted(set(policy) - POLICY_FIELDS)
    if unknown:
        raise InvalidRequestError(f"a key's policy cannot set {', '.join(unknown)} (it may set "
                                  f"{', '.join(sorted(POLICY_FIELDS))})", param="policy")
    check_tool_fields(policy)
    Policy().narrowed(_routing(policy))  # the values' own checks
    return dict(policy)


def _routing(policy: dict[str, Any] | None) -> dict[str, Any] | None:
    """A key's policy without its tool fields: what narrows the routing policy."""
    if not policy:
        return None
    return {k: v for k, v in policy.items() if k not in TOOL_FIELDS} or None


@dataclass(frozen=True)
class KeyAccess:
    store: KeyStore
    chain: list[KeyRecord]  # the key first, then its ancestors

    @property
    def key(self) -> KeyRecord:
        return self.chain[0]

    @property
    def name(self) -> str:
        return self.chain[0].name

    def allows_model(self, model: str) -> bool:
        """Whether every key of the chain lists ``model`` (a key without a list allows all)."""
        return all(key.models is None or any(fnmatchcase(model, p) for p in key.models)
                   for key in self.chain)

    def check_model(self, model: str) -> None:
        if not self.allows_model(model):
            raise PermissionDeniedError(f"the key '{self.name}' may not use the model "
                                        f"'{model}'", param="model")

    def narrow(self, policy: Policy) -> Policy:
        """``policy`` narrowed by each key of the chain, the root's first."""
        for key in reversed(self.chain):
            policy = policy.narrowed(_routing(key.policy))
        return policy

    def tool_limits(self) -> ToolLimits:
        """What the chain lets the key buy from the tool market."""
        return ToolLimits.of(self.chain)

    def budget(self, budget: Budget, request_id: str, model: str) -> KeyedBudget:
        return KeyedBudget(self.store, self.key.id, budget, request_id, model)


class KeyReservation(Reservation):
    """A hold on a key's chain (in the store) and on the global budget, released once."""

    def __init__(self, inner: Reservation, store: KeyStore, held: int) -> None:
        super().__init__(inner.budget, inner.amount)
        self._inner = inner
        self._store = store
        self._held = held

    def release(self, actual: int) -> None:
        if self.released:
            return
        self.released = True
        try:
            self._store.settle_later(self._held, actual)  # off the loop, in order
        finally:
            self._inner.release(actual)


class KeyedBudget:
    """One request's budget: its key's chain, then the owner's global budget."""

    def __init__(self, store: KeyStore, key_id: int, budget: Budget, request_id: str,
                 model: str) -> None:
        self.store = store
        self.key_id = key_id
        self.budget = budget
        self.request_id = request_id
        self.model = model

    async def reserve(self, amount: int) -> Reservation:
        async with self.store.reserving:  # the key's hold, then the global one, as one step
            held = await self.store.reserve_async(self.key_id, amount, self.request_id,
                                                  self.model)
            try:
                inner = await self.budget.reserve(amount)
            except BaseException:
                self.store.settle_later(held, 0)  # before any later request's hold
                raise
        return KeyReservation(inner, self.store, held)
