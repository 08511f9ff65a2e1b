"""The gateway's reputation store: every node event in SQLite, and the score it gives.

Events, one row each (WAL, next to the spend log): ``success``; ``failure`` (the
node refused, timed out, errored or died mid-stream); ``receipt`` (its signed
receipt disagreed with what was received, or a paid answer came without one);
``audit_passed`` and ``audit_failed`` (with the tokens audited and the answers
flagged); ``unauditable`` (an audit could not be done: no answer, no token ids);
``dispute`` (it claimed a charged total that no receipt backs: the payer counted
what it can claim as disputed spend and pays it no more), which is also a
receipt disagreement.

A node is keyed by its identity (see ``NodeState.identity``): the address that
registered its URL on chain when it was discovered there, else its URL.

Score, a Beta (Laplace) estimate of "this node answers, honestly"::

    score = (1 + s + 5·p) / (2 + s + f + u + 5·p + 20·r + 100·a + 100·d)

with ``s`` successes, ``f`` failures, ``u`` unauditable, ``p`` audits passed,
``r`` receipt disagreements (disputes included), ``a`` audits failed and ``d``
disputes. No history gives 1/2, the
value every new node starts with (neutral); with only successes and failures it
is the Laplace success rate. A failed audit weighs as a hundred failures.

Bans that survive restarts:

- a failed audit bans the node for ``1 day x 2^(a-1)`` (capped at 30 days) from
  its latest failed audit, wall clock;
- a dispute (an unreceipted charge) bans it for ``7 days x 2^(d-1)`` (capped at
  30 days) from the latest one;
- an imported list from a trusted signer (see :mod:`agoranet.gateway.scorelist`)
  whose entry has failed audits and a ban still running bans the node (matched
  by identity or URL) until that ban ends, at most 30 days after the import.

Failures and other receipt disagreements only lower the score; their short growing
bans (``NodeState.record_failure``) last for one gateway run.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from agoranet.errors import ReputationListError
from agoranet.sqlite_checkpoints import BackgroundCheckpoints
from agoranet.store_writer import StoreWriter

__all__ = [
    "AUDIT_BAN_CAP_S",
    "AUDIT_BAN_S",
    "DISPUTE_BAN_S",
    "Ban",
    "EventKind",
    "ImportedVerdict",
    "NodeRecord",
    "Reputation",
    "failure_kind",
]

AUDIT_BAN_S = 86_400.0  # the first failed audit: one day
AUDIT_BAN_CAP_S = 30 * 86_400.0  # each further one doubles the ban, up to 30 days
DISPUTE_BAN_S = 7 * 86_400.0  # the first unreceipted charge: a week (doubling, same cap)

_W_PASSED, _W_RECEIPT, _W_FAILED_AUDIT, _W_DISPUTE = 5, 20, 100, 100
_SYNC_EVERY_S = 1.0  # how often to look for imports written by another process

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    node TEXT NOT NULL,
    url TEXT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL DEFAULT '',
    tokens INTEGER NOT NULL DEFAULT 0,
    flagged INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_node ON events (node, kind);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    models TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lists (
    signer TEXT PRIMARY KEY,
    issued_at INTEGER NOT NULL,
    imported_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS imported (
    signer TEXT NOT NULL,
    node TEXT NOT NULL,
    url TEXT NOT NULL,
    audits_failed INTEGER NOT NULL,
    banned_until REAL NOT NULL,
    reason TEXT NOT NULL,
    entry TEXT NOT NULL,
    imported_at REAL NOT NULL,
    PRIMARY KEY (signer, node)
);
"""


class EventKind(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    RECEIPT = "receipt"
    AUDIT_PASSED = "audit_passed"
    AUDIT_FAILED = "audit_failed"
    UNAUDITABLE = "unauditable"
    DISPUTE = "dispute"


def failure_kind(reason: str) -> EventKind:
    """A relay failure's kind: a receipt that disagrees or is missing, else a plain failure."""
    return EventKind.RECEIPT if "receipt" in reason.lower() else EventKind.FAILURE


@dataclass(frozen=True)
class Ban:
    until: float  # unix time
    reason: str


@dataclass
class NodeRecord:
    """A node's history, summed from its events."""

    node: str
    url: str = ""
    models: list[str] = field(default_factory=list)
    successes: int = 0
    failures: int = 0
    receipts: int = 0  # receipt disagreements
    unauditable: int = 0
    audits_passed: int = 0
    audits_failed: int = 0
    tokens_audited: int = 0
    answers_flagged: int = 0
    last_seen: float = 0.0
    last_verdict: str | None = None
    last_failed_audit: float = 0.0
    disputes: int = 0  # unreceipted charges (each also counts in ``receipts``)
    last_dispute: float = 0.0

    @property
    def score(self) -> float:
        good = self.successes + _W_PASSED * self.audits_passed
        bad = (self.failures + self.unauditable + _W_RECEIPT * self.receipts
               + _W_FAILED_AUDIT * self.audits_failed + _W_DISPUTE * self.disputes)
        return (1 + good) / (2 + good + bad)

    def ban(self) -> Ban | None:
        """The longest ban its own failed audits and disputes earn (expired or not), or None."""
        bans = []
        if self.audits_failed:
            length = min(AUDIT_BAN_CAP_S, AUDIT_BAN_S * 2.0 ** (self.audits_failed - 1))
            bans.append(Ban(self.last_failed_audit + length,
                            f"failed {self.audits_failed} audit(s) of the weights it serves"))
        if self.disputes:
            length = min(AUDIT_BAN_CAP_S, DISPUTE_BAN_S * 2.0 ** (self.disputes - 1))
            bans.append(Ban(self.last_dispute + length,
                            f"claimed {self.disputes} charge(s) no receipt backs"))
        return max(bans, key=lambda b: b.until, default=None)

    def apply(self, kind: EventKind, ts: float, count: int = 1, tokens: int = 0,
              flagged: int = 0) -> None:
        if kind is EventKind.SUCCESS:
            self.successes += count
        elif kind is EventKind.FAILURE:
            self.failures += count
        elif kind is EventKind.RECEIPT:
            self.receipts += count
        elif kind is EventKind.UNAUDITABLE:
            self.unauditable += count
        elif kind is EventKind.AUDIT_PASSED:
            self.audits_passed += count
        elif kind is EventKind.AUDIT_FAILED:
            self.audits_failed += count
            self.last_failed_audit = max(self.last_failed_audit, ts)
        elif kind is EventKind.DISPUTE:
            self.receipts += count
            self.disputes += count
            self.last_dispute = max(self.last_dispute, ts)
        if kind in (EventKind.AUDIT_PASSED, EventKind.AUDIT_FAILED):
            self.tokens_audited += tokens
            self.answers_flagged += flagged
        self.last_seen = max(self.last_seen, ts)


@dataclass(frozen=True)
class ImportedVerdict:
    """One node's entry in a trusted signer's list, as far as bans go."""

    signer: str
    node: str
    url: str
    audits_failed: int
    banned_until: float
    reason: str
    entry: dict[str, Any]

    def ban(self, imported_at: float) -> Ban | None:
        if self.audits_failed <= 0:
            return None
        until = min(self.banned_until, imported_at + AUDIT_BAN_CAP_S)
        return Ban(until, f"{self.reason} (list of {self.signer})")


class Reputation:
    """The event store; scores and bans are kept in memory and updated with each event."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # Events are written (no fsync) on a writer thread, fire-and-forget: the scores and
        # bans are the in-memory records, updated at once; the file only rebuilds them on the
        # next start, and close() writes every event handed over. The checkpoints, which
        # fsync, run on a thread of their own.
        self._checkpoints = BackgroundCheckpoints(path, self._db,
                                                  name="agoranet-reputation-checkpoints")
        self._writer = StoreWriter("agoranet-reputation-writer")
        self._lock = threading.Lock()  # the records (and, taken first, the connection)
        self._db_lock = threading.Lock()  # the connection: the writer thread takes only it
        self._records: dict[str, NodeRecord] = {}
        self._imported: list[tuple[ImportedVerdict, float]] = []
        self._version = -1
        self._synced = 0.0
        with self._lock:
            self._load()
            self._load_imports()

    # ------------------------------------------------------------------ events

    def add(self, node: str, url: str, kind: EventKind, *, models: tuple[str, ...] = (),
            model: str = "", tokens: int = 0, flagged: int = 0, detail: str = "",
            ts: float | None = None) -> NodeRecord:
        """Record one event of ``node`` (its identity), seen at ``url`` serving ``models``."""
        now = time.time() if ts is None else ts
        with self._lock:
            record = self._records.setdefault(node, NodeRecord(node))
            names = sorted(set(models) | ({model} if model else set()) | set(record.models))
            listing = None
            if url != record.url or names != record.models:
                listing = (node, url, json.dumps(names))
                record.url, record.models = url, names
            record.apply(kind, now, tokens=tokens, flagged=flagged)
            if kind in (EventKind.AUDIT_PASSED, EventKind.AUDIT_FAILED, EventKind.UNAUDITABLE):
                record.last_verdict = detail or str(kind)
        event = (now, node, url, str(kind), model, tokens, flagged, detail)
        self._writer.submit(lambda: self._write_event(event, listing))
        return record

    def _write_event(self, event: tuple[object, ...],
                     listing: tuple[str, str, str] | None) -> None:
        """On the writer thread: one event (and the node's new listing) in the file."""
        with self._db_lock:
            self._db.execute(
                "INSERT INTO events (ts, node, url, kind, model, tokens, flagged, detail)"
                " VALUES (?,?,?,?,?,?,?,?)", event)
            if listing is not None:
                self._db.execute("INSERT OR REPLACE INTO nodes (node, url, models) VALUES (?,?,?)",
                                 listing)
        self._checkpoints.wrote()

    def record(self, node: str) -> NodeRecord:
        """``node``'s record (an empty one if it has no history); do not modify it."""
        with self._lock:
            return self._records.get(node) or NodeRecord(node)

    def records(self) -> list[NodeRecord]:
        with self._lock:
            return sorted(self._records.values(), key=lambda r: -r.last_seen)

    def score(self, node: str) -> float:
        return self.record(node).score

    # -------------------------------------------------------------------- bans

    def ban(self, node: str, url: str, now: float | None = None) -> Ban | None:
        """The longest ban running now on ``node`` (identity) or ``url``, if any."""
        now = time.time() if now is None else now
        with self._lock:
            self._sync(now)
            record = self._records.get(node)
            bans = [record.ban() if record is not None else None]
            bans += [v.ban(at) for v, at in self._imported if node in (v.node, v.url)
                     or url in (v.node, v.url)]
        running = [b for b in bans if b is not None and b.until > now]
        return max(running, key=lambda b: b.until, default=None)

    # ----------------------------------------------------------------- imports

    def import_verdicts(self, signer: str, issued_at: int,
                        verdicts: list[ImportedVerdict], now: float | None = None) -> None:
        """Replace ``signer``'s earlier list; an older list than the one held is refused."""
        now = time.time() if now is None else now
        with self._lock, self._db_lock:
            row = self._db.execute("SELECT issued_at FROM lists WHERE signer = ?",
                                   (signer,)).fetchone()
            if row is not None and int(row[0]) > issued_at:
                raise ReputationListError(
                    f"this list from {signer} (issued {issued_at}) is older than the one "
                    f"already imported (issued {int(row[0])})")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM imported WHERE signer = ?", (signer,))
                self._db.execute("INSERT OR REPLACE INTO lists VALUES (?,?,?)",
                                 (signer, issued_at, now))
                self._db.executemany(
                    "INSERT OR REPLACE INTO imported VALUES (?,?,?,?,?,?,?,?)",
                    [(v.signer, v.node, v.url, v.audits_failed, v.banned_until, v.reason,
                      json.dumps(v.entry, sort_keys=True), now) for v in verdicts])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._load_imports()

    def imported(self) -> list[tuple[ImportedVerdict, float]]:
        """Every imported verdict, with when it was imported."""
        with self._lock:
            self._sync(time.time(), force=True)
            return list(self._imported)

    def flush(self) -> None:
        """Wait until every event recorded so far is in the file."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()  # every event handed over is written first
        self._checkpoints.close()
        with self._lock, self._db_lock:
            self._db.close()

    # ---------------------------------------------------------------- internal

    def _load(self) -> None:
        for node, kind, count, tokens, flagged, last in self._db.execute(
                "SELECT node, kind, COUNT(*), SUM(tokens), SUM(flagged), MAX(ts) FROM events"
                " GROUP BY node, kind"):
            record = self._records.setdefault(node, NodeRecord(node))
            record.apply(EventKind(kind), float(last), int(count), int(tokens), int(flagged))
        for node, url, models in self._db.execute("SELECT node, url, models FROM nodes"):
            record = self._records.setdefault(node, NodeRecord(node))
            record.url, record.models = url, list(json.loads(models))
        for node, detail, kind in self._db.execute(
                "SELECT node, detail, kind FROM events WHERE id IN (SELECT MAX(id) FROM events"
                " WHERE kind IN ('audit_passed', 'audit_failed', 'unauditable') GROUP BY node)"):
            self._records[node].last_verdict = detail or kind

    def _load_imports(self) -> None:
        self._imported = [
            (ImportedVerdict(signer, node, url, int(failed), float(until), reason,
                             json.loads(entry)), float(at))
            for signer, node, url, failed, until, reason, entry, at in self._db.execute(
                "SELECT signer, node, url, audits_failed, banned_until, reason, entry,"
                " imported_at FROM imported ORDER BY signer, node")]
        self._version = int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _sync(self, now: float, *, force: bool = False) -> None:
        """Reload imports if another process (``agoranet reputation import``) wrote some."""
        if not force and now - self._synced < _SYNC_EVERY_S:
            return
        self._synced = now
        with self._db_lock:
            if int(self._db.execute("PRAGMA data_version").fetchone()[0]) != self._version:
                self._load_imports()
