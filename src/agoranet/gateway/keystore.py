"""Gateway keys and their budgets (SQLite, WAL), shared by the gateway and the CLI.

A key is a random secret (``agn-`` and 256 bits) of which only the SHA-256 is kept;
it is never stored, logged or echoed after creation. Keys form a tree: the owner key
is its root, and a key may mint child keys whose budgets are capped by what it has
left. Every cent a key spends is spent by each of its ancestors too, so a request
reserves its worst case along the whole chain, in one ``BEGIN IMMEDIATE``
transaction, and settles what was actually spent: concurrent requests, in one
gateway or several processes sharing the file, can never overspend any key.

Reservations are rows, so a gateway that dies keeps them: the next gateway to start
settles each reservation of a holder whose process is gone **at its full amount**.
The answer may have been streamed, and a paid node holds a voucher for up to that
amount signed before the request left, while the process that could tell is gone:
nothing is ever forgotten, at worst a key loses the unspent part of the worst cases
that were in flight (:meth:`KeyStore.recover` returns them for the spend log).

Revoking a key marks its whole subtree; expiry is checked along the chain at each
request: either stops the subtree's next request, while requests in flight finish.
Rotating a key gives it a new secret and keeps everything else (budget, spend,
children, reservations): its old secret stops at once, or after a grace period, kept
meanwhile in ``retired_secrets`` (hash and deadline only); a rotation without grace
also ends every grace still running for that key.
Amounts are integers in base units; ``None`` as a budget means no cap of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agoranet.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from agoranet.gateway.budget import BudgetExceededError
from agoranet.sqlite_checkpoints import BackgroundCheckpoints
from agoranet.store_writer import StoreWriter

__all__ = [
    "OWNER",
    "KeyQuotaError",
    "KeyRecord",
    "KeyStore",
    "LostReservation",
    "NewKey",
    "hash_secret",
]

OWNER: Final = "owner"
PREFIX: Final = "agn-"
MAX_AMOUNT: Final = 2**63 - 1  # SQLite's INTEGER
MAX_GRACE_S: Final = 30 * 86400  # an old secret works at most this long after a rotation
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    parent INTEGER REFERENCES keys (id),
    hash BLOB NOT NULL UNIQUE,
    budget INTEGER,
    per_day INTEGER,
    models TEXT,
    policy TEXT NOT NULL,
    expires REAL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    spent INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS key_days (
    key INTEGER NOT NULL,
    day TEXT NOT NULL,
    spent INTEGER NOT NULL DEFAULT 0,
    reserved INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key, day)
);
CREATE TABLE IF NOT EXISTS retired_secrets (
    hash BLOB PRIMARY KEY,
    key INTEGER NOT NULL REFERENCES keys (id),
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY,
    key INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    day TEXT NOT NULL,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL
);
"""

# A key's row with its parent's name and today's spend (the day is the last parameter).
_RECORD = """
SELECT k.id, k.name, p.name, k.budget, k.per_day, k.models, k.policy, k.expires, k.status,
       k.created, k.spent, k.reserved, COALESCE(d.spent, 0), COALESCE(d.reserved, 0)
FROM {source} LEFT JOIN keys p ON p.id = k.parent
LEFT JOIN key_days d ON d.key = k.id AND d.day = ?
"""
_CHAIN = """
WITH RECURSIVE chain(id, depth) AS (
    SELECT ?, 0 UNION ALL SELECT k.parent, c.depth + 1 FROM keys k JOIN chain c ON k.id = c.id
    WHERE k.parent IS NOT NULL)
""" + _RECORD.format(source="chain c JOIN keys k ON k.id = c.id") + "ORDER BY c.depth"
_KEYS = _RECORD.format(source="keys k")
_CHAIN_IDS = """
WITH RECURSIVE chain(id) AS (
    SELECT ? UNION ALL SELECT k.parent FROM keys k JOIN chain c ON k.id = c.id
    WHERE k.parent IS NOT NULL)
SELECT id FROM chain
"""
_SUBTREE = """
WITH RECURSIVE tree(id) AS (
    SELECT ? UNION ALL SELECT k.id FROM keys k JOIN tree t ON k.parent = t.id)
SELECT id FROM tree
"""


class KeyQuotaError(BudgetExceededError):
    """A key (or one of its ancestors) cannot afford the request's worst case."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"


def hash_secret(secret: str) -> bytes:
    """What the store keeps of a secret: 256 random bits need no slow hash."""
    return hashlib.sha256(secret.encode()).digest()


def _today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored (no secret); ``parent`` is the parent's name."""

    id: int
    name: str
    parent: str | None
    budget: int | None
    per_day: int | None
    models: list[str] | None
    policy: dict[str, Any]
    expires: float | None
    status: str
    created: float
    spent: int
    reserved: int
    day_spent: int = 0
    day_reserved: int = 0

    @property
    def remaining(self) -> int | None:
        """What its own budget has left (``None``: no cap of its own)."""
        return None if self.budget is None else self.budget - self.spent - self.reserved

    @property
    def day_remaining(self) -> int | None:
        if self.per_day is None:
            return None
        return self.per_day - self.day_spent - self.day_reserved

    def state(self, now: float | None = None) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.status != "active":
            return self.status
        if self.expires is not None and self.expires <= (now or time.time()):
            return "expired"
        return "active"


@dataclass(frozen=True)
class NewKey:
    """A key just created: the only time its secret exists outside its holder."""

    secret: str = field(repr=False)
    record: KeyRecord


@dataclass(frozen=True)
class LostReservation:
    """A reservation of a gateway that died, settled at its full amount."""

    key: str
    amount: int
    request_id: str
    model: str


class KeyStore:
    """The keys, their spend and the reservations in flight, in one SQLite file."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=busy_timeout_s)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        with contextlib.suppress(OSError):  # the store holds hashes, not secrets
            path.chmod(0o600)
        self.holder = secrets.token_hex(8)
        # Its commits do not sync; the checkpoints, which do, run on a thread of their own.
        self._checkpoints = BackgroundCheckpoints(path, self._db,
                                                  name="agoranet-keystore-checkpoints")
        # The request path's writes, off the event loop (a commit may wait up to
        # ``busy_timeout_s`` for another process's): :meth:`reserve_async` and
        # :meth:`settle_later`. Every other use of the connection first waits for the
        # writes handed over before it (the lock flushes), so it sees them, in order.
        self._writer = StoreWriter("agoranet-keystore-writer")
        self._lock = _AfterWrites(self._writer)
        # Held by a request from its key's hold to its global budget's (keyaccess): as when
        # both ran on the loop, no other request's key hold comes between them.
        self.reserving = asyncio.Lock()

    def close(self) -> None:
        self._writer.close()
        self._checkpoints.close()
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: no other writer, in any process, meanwhile."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        self._checkpoints.wrote()

    # -- reading ---------------------------------------------------------------------

    @staticmethod
    def _record(row: tuple[Any, ...]) -> KeyRecord:
        (id_, name, parent, budget, per_day, models, policy, expires, status, created,
         spent, reserved, day_spent, day_reserved) = row
        return KeyRecord(id_, name, parent, budget, per_day,
                         json.loads(models) if models is not None else None, json.loads(policy),
                         expires, status, created, spent, reserved, day_spent, day_reserved)

    def _chain(self, key_id: int) -> list[KeyRecord]:
        return [self._record(r) for r in self._db.execute(_CHAIN, (key_id, _today()))]

    def chain(self, key_id: int) -> list[KeyRecord]:
        """The key and its ancestors, the key first."""
        with self._lock:
            return self._chain(key_id)

    def get(self, name: str) -> KeyRecord:
        with self._lock:
            row = self._db.execute(_KEYS + "WHERE k.name = ?", (_today(), name)).fetchone()
            if row is None:
                raise InvalidRequestError(f"no key named '{name}'", param="name")
            return self._record(row)

    def find(self, name: str) -> KeyRecord | None:
        try:
            return self.get(name)
        except InvalidRequestError:
            return None

    def subtree(self, root: str | None = None) -> list[KeyRecord]:
        """``root`` and its descendants (every key without one), parents before children."""
        with self._lock:
            if root is None:
                rows = self._db.execute(_KEYS + "ORDER BY k.id", (_today(),)).fetchall()
            else:
                found = self._db.execute("SELECT id FROM keys WHERE name = ?",
                                         (root,)).fetchone()
                if found is None:
                    raise InvalidRequestError(f"no key named '{root}'", param="name")
                ids = [i for (i,) in self._db.execute(_SUBTREE, (found[0],))]
                rows = self._db.execute(
                    _KEYS + f"WHERE k.id IN ({','.join('?' * len(ids))}) ORDER BY k.id",
                    (_today(), *ids)).fetchall()
            return [self._record(r) for r in rows]

    def authenticate(self, secret: str | None, now: float | None = None) -> list[KeyRecord]:
        """The chain (key first) of a valid, active, unexpired key whose ancestors are all
        active and unexpired; otherwise :class:`AuthenticationError`, never echoing it."""
        if not secret:
            raise AuthenticationError("this gateway needs an API key: send 'Authorization: "
                                      "Bearer agn-...' (or start it with --open)")
        digest = hash_secret(secret)
        with self._lock:
            now = now or time.time()
            row = self._db.execute("SELECT id, hash FROM keys WHERE hash = ?",
                                   (digest,)).fetchone()
            if row is None:  # a secret rotated out, within its grace period
                row = self._db.execute("SELECT key, hash FROM retired_secrets WHERE hash = ?"
                                       " AND until > ?", (digest, now)).fetchone()
            if row is None or not hmac.compare_digest(bytes(row[1]), digest):
                raise AuthenticationError("the API key is not valid")
            chain = self._chain(row[0])
        for key in chain:
            state = key.state(now)
            if state != "active":
                whose = "this key" if key is chain[0] else f"its ancestor key '{key.name}'"
                raise AuthenticationError(f"the API key '{chain[0].name}' is not usable: "
                                          f"{whose} is {state}")
        return chain

    # -- creating and changing keys --------------------------------------------------

    def create(self, name: str, *, parent: str | None, budget: int | None,
               per_day: int | None = None, models: list[str] | None = None,
               policy: dict[str, Any] | None = None, expires: float | None = None,
               within: str | None = None) -> NewKey:
        """A new key under ``parent`` (``None``: a root, only the owner is one).

        Its budget and daily cap may not exceed what ``parent`` and each ancestor has
        left, its expiry not outlive theirs; ``within`` (the caller's key) must be the
        parent or one of its ancestors."""
        if not _NAME.fullmatch(name):
            raise InvalidRequestError("a key's name is 1-48 letters, digits, '.', '_' or '-',"
                                      " starting with a letter or digit", param="name")
        for amount, what in ((budget, "budget"), (per_day, "per_day")):
            if amount is not None and not 0 <= amount <= MAX_AMOUNT:
                raise InvalidRequestError(f"'{what}' must be 0 to {MAX_AMOUNT} base units",
                                          param=what)
        secret = PREFIX + secrets.token_urlsafe(32)
        with self._write() as db:
            if db.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                raise InvalidRequestError(f"a key named '{name}' exists already", param="name")
            parent_id = None
            if parent is not None:
                chain = self._named_chain(parent)
                if within is not None and within not in [k.name for k in chain]:
                    raise PermissionDeniedError(f"key '{parent}' is not '{within}' or one of "
                                                "its descendants", param="parent")
                _fits(chain, budget, per_day, expires)
                parent_id = chain[0].id
                if models is None:
                    models = chain[0].models
                if expires is None:  # shown as the chain's: it stops with its parent
                    expires = min((k.expires for k in chain if k.expires is not None),
                                  default=None)
            db.execute(
                "INSERT INTO keys (name, parent, hash, budget, per_day, models, policy, expires,"
                " status, created) VALUES (?,?,?,?,?,?,?,?,'active',?)",
                (name, parent_id, hash_secret(secret), budget, per_day,
                 json.dumps(models) if models is not None else None,
                 json.dumps(policy or {}), expires, time.time()))
            record = self._chain(self._id(name))[0]
        return NewKey(secret, record)

    def reissue(self, name: str) -> str:
        """A new secret for ``name`` (the old one stops working at once)."""
        return self.rotate(name).secret

    def rotate(self, name: str, *, grace_s: float = 0.0, within: str | None = None,
               now: float | None = None) -> NewKey:
        """A new secret for ``name``, which keeps its budget, spend, children and
        reservations. Its current secret keeps working for ``grace_s`` seconds (0: it
        stops at once, and so does every older secret still in its grace period);
        ``within`` (the caller) must be ``name`` or one of its ancestors."""
        if not 0 <= grace_s <= MAX_GRACE_S:
            raise InvalidRequestError(f"the grace period is 0 to {MAX_GRACE_S} seconds",
                                      param="grace_s")
        secret = PREFIX + secrets.token_urlsafe(32)
        now = now or time.time()
        with self._write() as db:
            chain = self._named_chain(name)
            key = chain[0]
            if within is not None and within not in [k.name for k in chain]:
                raise PermissionDeniedError(f"key '{name}' is not '{within}' or one of its "
                                            "descendants", param="name")
            if grace_s > 0:
                old = db.execute("SELECT hash FROM keys WHERE id = ?", (key.id,)).fetchone()[0]
                db.execute("INSERT INTO retired_secrets (hash, key, until) VALUES (?, ?, ?)",
                           (old, key.id, now + grace_s))
            else:
                db.execute("DELETE FROM retired_secrets WHERE key = ?", (key.id,))
            db.execute("DELETE FROM retired_secrets WHERE until <= ?", (now,))
            db.execute("UPDATE keys SET hash = ? WHERE id = ?", (hash_secret(secret), key.id))
            return NewKey(secret, self._chain(key.id)[0])

    def top_up(self, name: str, amount: int, *, within: str | None = None) -> KeyRecord:
        """Raise ``name``'s budget by ``amount``: its new remaining may not exceed what any
        ancestor up to ``within`` (a strict ancestor) has left."""
        if not 0 < amount <= MAX_AMOUNT:
            raise InvalidRequestError("'amount' must be more than zero", param="amount")
        with self._write() as db:
            chain = self._named_chain(name)
            key = chain[0]
            ancestors = [k.name for k in chain[1:]]
            if within is not None and within not in ancestors:
                raise PermissionDeniedError(f"key '{name}' is not a descendant of '{within}'",
                                            param="name")
            if key.budget is None:
                raise InvalidRequestError(f"key '{name}' has no budget of its own to top up")
            new_remaining = (key.remaining or 0) + amount
            for ancestor in chain[1:]:
                if ancestor.remaining is not None and new_remaining > ancestor.remaining:
                    raise InvalidRequestError(
                        f"key '{ancestor.name}' has {ancestor.remaining} base units left; "
                        f"'{name}' would have {new_remaining}", param="amount")
            if key.budget + amount > MAX_AMOUNT:
                raise InvalidRequestError("that budget is too large", param="amount")
            db.execute("UPDATE keys SET budget = budget + ? WHERE id = ?", (amount, key.id))
            return self._chain(key.id)[0]

    def revoke(self, name: str, *, within: str | None = None) -> list[str]:
        """Revoke ``name`` and its whole subtree (``within``: the caller, who must be
        ``name`` or an ancestor); the names revoked."""
        with self._write() as db:
            chain = self._named_chain(name)
            if within is not None and within not in [k.name for k in chain]:
                raise PermissionDeniedError(f"key '{name}' is not '{within}' or one of its "
                                            "descendants", param="name")
            ids = [i for (i,) in db.execute(_SUBTREE, (chain[0].id,))]
            marks = ",".join("?" * len(ids))
            db.execute(f"UPDATE keys SET status = 'revoked' WHERE id IN ({marks})", ids)
            return [n for (n,) in db.execute(f"SELECT name FROM keys WHERE id IN ({marks})"
                                             " ORDER BY id", ids)]

    def _id(self, name: str) -> int:
        row = self._db.execute("SELECT id FROM keys WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise InvalidRequestError(f"no key named '{name}'", param="name")
        return int(row[0])

    def _named_chain(self, name: str) -> list[KeyRecord]:
        return self._chain(self._id(name))

    # -- money -----------------------------------------------------------------------

    def reserve(self, key_id: int, amount: int, request_id: str, model: str) -> int:
        """Hold ``amount`` against the key and every ancestor, or :class:`KeyQuotaError`
        naming the first one that cannot afford it; the reservation's id."""
        day = _today()
        with self._write() as db:
            chain = self._chain(key_id)
            for key in chain:
                for left, cap, per in ((key.remaining, key.budget, ""),
                                       (key.day_remaining, key.per_day, " today")):
                    if left is not None and cap is not None and amount > left:
                        whose = "" if key is chain[0] else f" (an ancestor of '{chain[0].name}')"
                        raise KeyQuotaError(
                            f"key '{key.name}'{whose} has {max(0, left)} base units left{per} "
                            f"of {cap}; this request may cost up to {amount}")
            ids = [k.id for k in chain]
            marks = ",".join("?" * len(ids))
            db.execute(f"UPDATE keys SET reserved = reserved + ? WHERE id IN ({marks})",
                       (amount, *ids))
            db.executemany("INSERT INTO key_days (key, day, reserved) VALUES (?, ?, ?)"
                           " ON CONFLICT (key, day) DO UPDATE SET reserved = reserved +"
                           " excluded.reserved", [(i, day, amount) for i in ids])
            cursor = db.execute(
                "INSERT INTO reservations (key, amount, day, holder, pid, request_id, model,"
                " created) VALUES (?,?,?,?,?,?,?,?)",
                (key_id, amount, day, self.holder, os.getpid(), request_id, model, time.time()))
            return int(cursor.lastrowid or 0)

    async def reserve_async(self, key_id: int, amount: int, request_id: str, model: str) -> int:
        """:meth:`reserve` on the store's writer thread: the hold is committed on return, and
        the event loop serves other requests meanwhile. A caller cancelled meanwhile leaves
        no hold: it is settled at 0 once made."""
        made = asyncio.ensure_future(
            self._writer.call(lambda: self.reserve(key_id, amount, request_id, model)))
        try:
            return await asyncio.shield(made)
        except asyncio.CancelledError:
            made.add_done_callback(self._drop_hold)
            raise

    def _drop_hold(self, made: asyncio.Future[int]) -> None:
        if not made.cancelled() and made.exception() is None:
            self.settle_later(made.result(), 0)

    def settle_later(self, reservation: int, actual: int) -> None:
        """:meth:`settle` on the store's writer thread, after every write handed over before
        (its reservation's); returns at once. Until it is written, every other use of the
        store waits for it; if the gateway dies first, the hold is left and the next start
        settles it at its full amount (:meth:`recover`): more spent, never less."""
        self._writer.submit(lambda: self.settle(reservation, actual))

    def settle(self, reservation: int, actual: int) -> None:
        """Replace the hold by what was spent, along the chain; a second call does nothing."""
        with self._write() as db:
            self._settle(db, reservation, actual)

    def _settle(self, db: sqlite3.Connection, reservation: int, actual: int | None) -> int:
        row = db.execute("SELECT key, amount, day FROM reservations WHERE id = ?",
                         (reservation,)).fetchone()
        if row is None:
            return 0
        key_id, amount, day = row
        spent = amount if actual is None else actual
        ids = [i for (i,) in db.execute(_CHAIN_IDS, (key_id,))]
        marks = ",".join("?" * len(ids))
        db.execute(f"UPDATE keys SET reserved = reserved - ?, spent = spent + ? WHERE id IN"
                   f" ({marks})", (amount, spent, *ids))
        db.execute(f"UPDATE key_days SET reserved = reserved - ?, spent = spent + ? WHERE day = ?"
                   f" AND key IN ({marks})", (amount, spent, day, *ids))
        db.execute("DELETE FROM reservations WHERE id = ?", (reservation,))
        return int(spent)

    def recover(self) -> list[LostReservation]:
        """Settle, at their full amounts, the reservations of holders whose process is gone
        (see the module's docstring); what was settled so."""
        lost = []
        with self._write() as db:
            rows = db.execute("SELECT r.id, r.pid, k.name, r.amount, r.request_id, r.model"
                              " FROM reservations r JOIN keys k ON k.id = r.key"
                              " ORDER BY r.id").fetchall()
            for id_, pid, name, amount, request_id, model in rows:
                if _alive(pid):  # this process, or another gateway sharing the file
                    continue
                self._settle(db, id_, None)
                lost.append(LostReservation(name, amount, request_id, model))
        return lost

    def in_flight(self) -> int:
        """How many reservations are held (by any process)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM reservations").fetchone()[0])


class _AfterWrites:
    """The store's lock, taken once the writes handed to its writer have run (at once on
    the writer's own thread)."""

    def __init__(self, writer: StoreWriter) -> None:
        self._writer = writer
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._writer.flush()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _fits(chain: list[KeyRecord], budget: int | None, per_day: int | None,
          expires: float | None) -> None:
    """A child's limits within every key of its parent's chain, or a clear refusal."""
    for key in chain:
        if key.remaining is not None and (budget is None or budget > key.remaining):
            raise InvalidRequestError(
                f"key '{key.name}' has {max(0, key.remaining)} base units left: a key under it"
                f" cannot be given {'no cap' if budget is None else budget}", param="budget")
        # Without a daily cap or an expiry of its own, the chain's still hold for it.
        if key.per_day is not None and per_day is not None and per_day > key.per_day:
            raise InvalidRequestError(
                f"key '{key.name}' may spend {key.per_day} base units a day: a key under it "
                "cannot be given more", param="per_day")
        if key.expires is not None and expires is not None and expires > key.expires:
            raise InvalidRequestError(
                f"key '{key.name}' expires earlier: a key under it cannot outlive it",
                param="expires")
