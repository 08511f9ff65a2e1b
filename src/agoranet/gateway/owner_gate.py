"""The gateway owner's gate: what lets a request through to the owner's own endpoints
(``/metrics``): the owner key of the key store as ``Authorization: Bearer``. An ``--open``
gateway has no keys at all, so its gate is open, like its OpenAI routes."""

from __future__ import annotations

from collections.abc import Callable

from agoranet.api.secret_gate import SecretGate
from agoranet.errors import AgoranetError
from agoranet.gateway.keystore import OWNER, KeyStore

__all__ = ["owner_check", "owner_gate"]


def owner_check(keys: KeyStore) -> Callable[[str], bool]:
    """Accepts the gateway's owner key (by the key store's own check), nothing else."""
    def check(secret: str) -> bool:
        try:
            chain = keys.authenticate(secret)
        except AgoranetError:
            return False
        return chain[0].name == OWNER
    return check


def owner_gate(keys: KeyStore | None) -> SecretGate:
    """The owner's gate of a gateway with ``keys`` (open without: an ``--open`` gateway)."""
    return SecretGate(owner_check(keys) if keys is not None else None, realm="gateway owner")
