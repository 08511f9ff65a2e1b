"""Who owns which adapter on a node: whoever uploaded it or had it trained here.

An owner is named the way fine-tuning jobs name theirs: the SHA-256 of the
caller's bearer token (any secret string; see
:func:`agoranet.node.finetune_routes.owner_of`), so the key that created a
fine-tuning job also lists the adapter it produced. An upload without a bearer
token is still taken (uploads stay open on a free node): the node then makes a
fresh owner token, returns it once in the upload's answer (``owner_token``), and
that token, sent as the bearer token, lists the adapter afterwards.

On a paid node an upload is paid, and the address that signed its payment (the
channel's payer authorizer, checked by the payment) is recorded as an owner too,
as ``payer:0x...`` (:func:`payer_owner`): a gateway or wallet that paid for an
upload uses its private adapter by paying with the same key.

Ownership decides who *lists* an adapter (``GET /v1/adapters``) and who may
change its flags. Serving one needs only its id, which is a content hash nobody
guesses, unless an owner marked it *private*: then it is served to its owners
alone and anyone else is told it does not exist
(:mod:`agoranet.node.adapter_access`). The node's ``/v1/models`` names only the
adapters marked public (``?public=true``); an adapter is never both. The records
live in a small SQLite file beside the adapter store, so they outlast restarts.
Two owners of the same content (the same id) are both owners.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from pathlib import Path

__all__ = ["AdapterOwners", "owner_id", "owner_token", "payer_owner"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS owners (
    adapter TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (adapter, owner)
);
CREATE TABLE IF NOT EXISTS public (adapter TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS private (adapter TEXT PRIMARY KEY);
"""


def owner_id(token: str) -> str:
    """The owner a bearer token names (its SHA-256, hex): tokens are never stored."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def payer_owner(address: str) -> str:
    """The owner an address that signed a payment names (lower-case, ``payer:``-prefixed,
    so it never equals a token's hash)."""
    return "payer:" + address.lower()


def owner_token() -> str:
    """A fresh secret for an upload that came without a bearer token."""
    return "adapter-owner-" + secrets.token_urlsafe(24)


class AdapterOwners:
    """The (adapter id, owner) pairs of one node."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def add(self, adapter: str, owner: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO owners (adapter, owner) VALUES (?, ?)",
                             (adapter, owner))

    def owned_by(self, owner: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT adapter FROM owners WHERE owner = ?", (owner,))
            return {str(r[0]) for r in rows}

    def owners(self, adapter: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT owner FROM owners WHERE adapter = ?", (adapter,))
            return {str(r[0]) for r in rows}

    def make_public(self, adapter: str) -> None:
        """List ``adapter`` in the node's ``/v1/models`` (for everyone to see)."""
        self.set_flags(adapter, public=True)

    def set_flags(self, adapter: str, *, public: bool | None = None,
                  private: bool | None = None) -> None:
        """Mark ``adapter`` public or not, private or not (never both: the caller checks)."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for table, value in (("public", public), ("private", private)):
                if value is True:
                    self._db.execute(f"INSERT OR IGNORE INTO {table} (adapter) VALUES (?)",
                                     (adapter,))
                elif value is False:
                    self._db.execute(f"DELETE FROM {table} WHERE adapter = ?", (adapter,))

    def is_private(self, adapter: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM private WHERE adapter = ?", (adapter,))
            return row.fetchone() is not None

    def is_public(self, adapter: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM public WHERE adapter = ?", (adapter,))
            return row.fetchone() is not None

    def public(self) -> set[str]:
        with self._lock:
            return {str(r[0]) for r in self._db.execute("SELECT adapter FROM public")}

    def close(self) -> None:
        with self._lock:
            self._db.close()
