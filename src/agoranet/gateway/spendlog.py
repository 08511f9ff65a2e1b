"""The gateway's spend log (SQLite): one row per node segment of each request.

A request served by one node is one row; a failover adds a row per node that
streamed part of the answer; a background audit adds a row per challenge the
audited node answered, with outcome ``audit``; a node that claimed a charge no receipt
backs adds a row with outcome ``disputed`` for what it can claim beyond its receipts
(no receipt), and a receipt the gateway adopted from a node's corrective 402 (an answer
it never saw) a row with outcome ``resynced``; a paid stream cut before its final receipt
a row with outcome ``unreceipted`` (no receipt) for what the tokens that arrived after its
last receipt cost at the node's prices (the node may hold a receipt for them that never
arrived); a reservation left by a gateway that
died is settled at its full amount with outcome ``lost`` (see ``agoranet.gateway.keystore``).
A fine-tuning job the gateway pays is one row (request id: the job's id) with outcome
``held`` and amount 0 while it trains, rewritten when it ends (``ok`` at its receipt).
Each row names the gateway key that asked (none on an ``--open`` gateway). Amounts are
integers in base units.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agoranet.sqlite_checkpoints import BackgroundCheckpoints

__all__ = ["SpendLog", "SpendRow"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    model TEXT NOT NULL,
    node TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    ttft_ms REAL,
    duration_ms REAL NOT NULL,
    outcome TEXT NOT NULL,
    receipt TEXT,
    key TEXT
);
CREATE INDEX IF NOT EXISTS spend_request ON spend (request_id);
"""


@dataclass(frozen=True)
class SpendRow:
    request_id: str
    model: str
    node: str
    prompt_tokens: int
    completion_tokens: int
    amount: int
    ttft_ms: float | None
    duration_ms: float
    # "ok", "partial" (failed over mid-answer), "failed", "audit", "disputed" (claimed by a
    # node beyond its receipts), "resynced" (a receipt adopted from a corrective 402),
    # "held" (a fine-tuning job still training: 0 until it ends, then "ok" at its receipt),
    # "unreceipted" (tokens of a cut stream that arrived after its last receipt)
    outcome: str
    receipt: str | None = None  # the node's signed receipt (JSON) behind ``amount``, if paid
    key: str | None = None  # the gateway key that asked, if any


class SpendLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A log, not the money's source of truth (signed receipts are, kept by the payer):
        # WAL with NORMAL sync survives a crash of the gateway without an fsync per request.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(spend)")}
        if "receipt" not in columns:  # a log written before receipts were kept
            self._db.execute("ALTER TABLE spend ADD COLUMN receipt TEXT")
        if "key" not in columns:  # a log written before gateway keys
            self._db.execute("ALTER TABLE spend ADD COLUMN key TEXT")
        self._lock = threading.Lock()
        # Rows are written at once (no fsync); the checkpoints, which fsync, run off the
        # event loop on a thread of their own.
        self._checkpoints = BackgroundCheckpoints(path, self._db,
                                                  name="agoranet-spendlog-checkpoints")
        # Told of every row added, after it is written (metrics); one that fails is logged.
        self.listeners: list[Callable[[SpendRow], None]] = []

    def add(self, row: SpendRow) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO spend (ts, request_id, model, node, prompt_tokens, completion_tokens,"
                " amount, ttft_ms, duration_ms, outcome, receipt, key)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (time.time(), row.request_id, row.model, row.node, row.prompt_tokens,
                 row.completion_tokens, row.amount, row.ttft_ms, row.duration_ms, row.outcome,
                 row.receipt, row.key),
            )
        self._checkpoints.wrote()
        for listener in self.listeners:
            try:
                listener(row)
            except Exception:  # a listener never costs the log a row or its caller a request
                logger.exception("a spend-log listener failed")

    def update(self, request_id: str, outcome: str, *, amount: int, tokens: int,
               duration_ms: float, receipt: str | None) -> None:
        """Rewrite the ``held`` row of ``request_id`` (a fine-tuning job, logged when it was
        created) with what the job ended up costing."""
        with self._lock:
            self._db.execute(
                "UPDATE spend SET outcome = ?, amount = ?, prompt_tokens = ?, duration_ms = ?,"
                " receipt = ? WHERE request_id = ? AND outcome = 'held'",
                (outcome, amount, tokens, duration_ms, receipt, request_id))
        self._checkpoints.wrote()

    def answered(self, request_id: str) -> bool:
        """Whether ``request_id``'s answer was logged whole (a row with outcome ``ok``): its
        rows then hold all it cost."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM spend WHERE request_id = ? AND outcome = 'ok'"
                                    " LIMIT 1", (request_id,)).fetchone() is not None

    def total(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(amount), 0) FROM spend").fetchone()[0])

    def rows(self, request_id: str | None = None) -> list[SpendRow]:
        query = ("SELECT request_id, model, node, prompt_tokens, completion_tokens, amount,"
                 " ttft_ms, duration_ms, outcome, receipt, key FROM spend")
        args: tuple[str, ...] = ()
        if request_id is not None:
            query += " WHERE request_id = ?"
            args = (request_id,)
        with self._lock:
            return [SpendRow(*r) for r in self._db.execute(query + " ORDER BY id", args)]

    def audit_total(self) -> int:
        """What background audits cost (rows with outcome ``audit``)."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(amount), 0) FROM spend"
                                        " WHERE outcome = 'audit'").fetchone()[0])

    def totals(self, by: str, *,
               audits: bool | None = None) -> list[tuple[str, int, int, int, int]]:
        """``(key, requests, tokens, amount, receipted)`` grouped by ``model``, ``node`` or
        ``day`` or ``key`` (the gateway key; ``-`` for none), where ``receipted`` is the part
        of ``amount`` backed by a node's signed receipt; ``audits`` True counts only audits, False only requests, None both."""
        column = {"model": "model", "node": "node", "key": "COALESCE(key, '-')",
                  "day": "date(ts, 'unixepoch')"}.get(by)
        if column is None:
            raise ValueError(f"cannot group by {by!r}")
        where = {None: "", True: " WHERE outcome = 'audit'",
                 False: " WHERE outcome != 'audit'"}[audits]
        with self._lock:
            return [(str(k), int(n), int(t), int(a), int(r)) for k, n, t, a, r in self._db.execute(
                f"SELECT {column}, COUNT(DISTINCT request_id), SUM(prompt_tokens +"
                f" completion_tokens), SUM(amount), SUM(CASE WHEN receipt IS NULL THEN 0"
                f" ELSE amount END) FROM spend{where} GROUP BY 1 ORDER BY 4 DESC")]

    def close(self) -> None:
        self._checkpoints.close()
        with self._lock:
            self._db.close()
