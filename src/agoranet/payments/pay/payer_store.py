"""Where a payer keeps its channel state and every receipt: one SQLite file per channel.

A receipt and the channel state it moves are written in one transaction, in
WAL mode with ``synchronous=NORMAL``: a commit survives the gateway being
killed (the data is in the WAL, handed to the OS) without an fsync per request,
which would cost more than the rest of the payment. After a power loss the last
commits may be gone; the node's corrective 402 then brings the charged total
back, and the payer only adopts a higher one when the node's receipt in it backs
it (:meth:`~agoranet.payments.pay.payer.Payer.resync`; the voucher the receipt is
matched against is saved before it is sent).

A channel whose on-chain state the payer found unusable (gone after a chain reset,
refunded, never funded) is *retired*, never deleted: its last state stays in the
``retired`` table and its receipts in ``receipts`` (each names its channel), so the
record of what was paid survives the new channel that replaces it.

Folders written by earlier versions (``channel.json`` and ``receipts.jsonl``)
are imported once, on first open.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from agoranet.errors import PaymentError
from agoranet.payments.receipts import Receipt
from agoranet.sqlite_checkpoints import BackgroundCheckpoints

__all__ = ["ChannelState", "PayerStore"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS channel (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    receipt TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS retired (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    state  TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass
class ChannelState:
    """What the payer knows of its channel; amounts in base units."""

    channel_id: str
    config: dict[str, Any]
    deposited: int = 0
    charged: int = 0  # what the payer's receipts say it owes: raised by a receipt only
    voucher: int = 0  # the highest voucher ever signed: the most the node can claim
    receipts: int = 0
    spent: int = 0  # receipted amounts plus ``disputed`` plus ``unreceipted``
    disputed: int = 0  # counted as spent without a receipt: a node claimed beyond them
    dispute: str = ""  # why this channel pays no more (a node claimed what no receipt backs)
    # The last vouchers signed, by request id: [max_amount, charged_before, receipted,
    # refused], until the request's final receipt (a receipt shown later, in a corrective
    # 402, is matched against them; never one for a request whose receipt was refused).
    payments: dict[str, list[int]] = field(default_factory=dict)
    # Counted as spent, by request id, for the tokens of a stream cut before its final
    # receipt that arrived beyond its last receipt (Payer.cut): the node may hold a receipt
    # for them that never arrived. Taken off a receipt for that request shown later.
    unreceipted: dict[str, int] = field(default_factory=dict)



class PayerStore:
    """The channel state (one row, JSON) and the receipts (in order) of one payer."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "payer.sqlite"
        fresh = not self.path.exists()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise PaymentError(f"cannot open the payer's store {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        # Its commits do not sync; the checkpoints, which do, run on a thread of their own
        # (not inside a save on the event loop).
        self._checkpoints = BackgroundCheckpoints(self.path, self._db,
                                                  name="agoranet-payer-checkpoints")
        if fresh:
            self._import_files(folder)

    def load(self) -> dict[str, Any] | None:
        """The saved channel state's fields, or None before the channel is opened."""
        with self._lock:
            row = self._db.execute("SELECT state FROM channel WHERE id = 1").fetchone()
        return dict(json.loads(row[0])) if row else None

    def save(self, state: ChannelState, receipt: Receipt | None = None) -> None:
        """Save ``state``, with ``receipt`` (the one that moved it) in the same commit."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if receipt is not None:
                    self._db.execute("INSERT INTO receipts (receipt) VALUES (?)",
                                     (json.dumps(receipt.to_json()),))
                self._db.execute("INSERT OR REPLACE INTO channel VALUES (1, ?)",
                                 (json.dumps(asdict(state)),))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise PaymentError(f"cannot save the payer's state: {exc}") from exc
        self._checkpoints.wrote()

    def replace(self, old: ChannelState, reason: str, new: ChannelState) -> None:
        """Retire ``old`` (kept, with ``reason``, in :meth:`retired`; its receipts stay) and
        make ``new`` the channel, in one commit."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT INTO retired (state, reason) VALUES (?, ?)",
                                 (json.dumps(asdict(old)), reason))
                self._db.execute("INSERT OR REPLACE INTO channel VALUES (1, ?)",
                                 (json.dumps(asdict(new)),))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise PaymentError(f"cannot save the payer's state: {exc}") from exc

    def retired(self) -> list[tuple[ChannelState, str]]:
        """Channels replaced by a new one (oldest first), each with why."""
        with self._lock:
            rows = self._db.execute("SELECT state, reason FROM retired ORDER BY seq").fetchall()
        return [(ChannelState(**json.loads(r[0])), str(r[1])) for r in rows]

    def receipts(self) -> list[Receipt]:
        with self._lock:
            rows = self._db.execute("SELECT receipt FROM receipts ORDER BY seq").fetchall()
        return [Receipt.from_json(json.loads(r[0])) for r in rows]

    def close(self) -> None:
        self._checkpoints.close()
        with self._lock:
            self._db.close()

    def _import_files(self, folder: Path) -> None:
        state_file, receipts_file = folder / "channel.json", folder / "receipts.jsonl"
        if not state_file.is_file():
            return
        known = {f.name for f in fields(ChannelState)}
        data = json.loads(state_file.read_text(encoding="utf-8"))
        state = ChannelState(**{k: v for k, v in data.items() if k in known})
        if receipts_file.is_file():
            for line in receipts_file.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._db.execute("INSERT INTO receipts (receipt) VALUES (?)", (line,))
        self.save(state)
