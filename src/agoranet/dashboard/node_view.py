"""What a node's dashboard shows its operator, as JSON: earnings, buyers, claims, load.

Read from the node's ledger (the SQLite file read-only for the time series and the
claims' transactions; a PostgreSQL ledger gives its totals through the ledger itself),
the engine's counters, its adapters and fine-tuning jobs. Vouchers' and receipts'
signatures never leave the node: channels show amounts and the buyers' addresses, claims
their public transaction hashes.

The gateways' audits of this node are ordinary paid requests on purpose (a node that
could tell them apart could cheat everyone else), so the node counts them among the
requests it answered; the verdicts are the gateways' (their dashboards and signed
reputation lists).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from bisect import bisect_right
from collections import deque
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agoranet.dashboard.series import bucket_width, floor_to
from agoranet.engines.adapters import AdapterHost
from agoranet.engines.base import Engine

if TYPE_CHECKING:
    from agoranet.node.payment_setup import NodePayments
    from agoranet.tuning.jobs import JobManager

__all__ = ["NodeView"]

_SAMPLES = 600  # load samples kept (one per poll, at most one a second)
_RECENT = 40
_RATE_WINDOW_S = 30.0


class NodeView:
    def __init__(self, engine: Engine, *, jobs: JobManager | None = None,
                 payments: NodePayments | None = None, ledger_file: Path | None = None,
                 settings: dict[str, Any] | None = None) -> None:
        self.engine = engine
        self.jobs = jobs
        self.payments = payments
        self.ledger_file = ledger_file if payments is not None else None
        self.settings = settings or {}
        self._load: deque[dict[str, Any]] = deque(maxlen=_SAMPLES)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.started = time.time()

    def data(self) -> dict[str, Any]:
        ledger = self._ledger_rows()
        return {
            "now": time.time(), "started": self.started,
            "node": {"engine": self.engine.name,
                     "models": [m.name for m in self.engine.models()],
                     "address": (str(self.payments.account.address)
                                 if self.payments is not None else None),
                     "paid": self.payments is not None, **self.settings},
            "earnings": self._earnings(),
            "series": _earnings_series(ledger),
            "claims": [{"ts": ts, "channel": channel, "amount": amount, "tx": tx,
                        "settled": settled}
                       for ts, channel, amount, tx, settled in reversed(ledger["claims"])][:50],
            "settlements": [{"ts": ts, "amount": amount, "tx": tx}
                            for ts, amount, tx in reversed(ledger["settlements"])][:50],
            "requests": [{"ts": ts, "id": rid, "tokens_in": t_in, "tokens_out": t_out,
                          "amount": amount}
                         for ts, rid, t_in, t_out, amount in
                         reversed(ledger["receipts"][-_RECENT:])],
            "load": self._sample(ledger["receipts"]),
            "adapters": self._adapters(),
            "jobs": self._jobs(),
        }

    # -- money -----------------------------------------------------------------------

    def _earnings(self) -> dict[str, Any]:
        if self.payments is None:
            return {"channels": [], "totals": None}
        rows = self.payments.ledger.earnings()
        failing = {f.channel_id: f for f in self.payments.ledger.claim_failures()}
        channels: list[dict[str, Any]] = [{"channel": e.channel_id, "buyer": e.payer, "charged": e.charged,
                     "claimed": e.claimed, "settled": e.settled, "unclaimed": e.unclaimed,
                     "requests": e.requests, "pending_settle": e.pending_settle,
                     "claim_error": e.claim_error or None,
                     "retry_at": failing[e.channel_id].retry_at
                     if e.channel_id in failing else None} for e in rows]
        totals: dict[str, int] = {k: sum(int(c[k]) for c in channels)
                  for k in ("charged", "claimed", "settled", "unclaimed", "requests")}
        totals["buyers"] = len({c["buyer"] for c in channels})
        return {"channels": channels, "totals": totals}

    def _ledger_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        empty: dict[str, list[tuple[Any, ...]]] = {"receipts": [], "claims": [],
                                                    "settlements": []}
        if self.ledger_file is None or not self.ledger_file.exists():
            return empty
        db = sqlite3.connect(f"file:{self.ledger_file}?mode=ro", uri=True)
        try:
            return {
                "receipts": db.execute(
                    "SELECT created_at, request_id, tokens_in, tokens_out, amount FROM"
                    " (SELECT * FROM receipts ORDER BY created_at DESC LIMIT 5000)"
                    " ORDER BY created_at").fetchall(),
                "claims": db.execute(
                    "SELECT created_at, channel_id, amount, tx_hash, settle_id IS NOT NULL"
                    " FROM claims ORDER BY id").fetchall(),
                "settlements": db.execute(
                    "SELECT created_at, amount, tx_hash FROM settlements WHERE tx_hash != ''"
                    " ORDER BY id").fetchall(),
            }
        except sqlite3.Error:
            return empty
        finally:
            db.close()

    # -- load, adapters, jobs --------------------------------------------------------

    def start_sampling(self, interval_s: float = 2.0) -> None:
        """Sample the engine's load every ``interval_s`` in a daemon thread, so the chart
        has a history from the start (without it, from the first look at the page on)."""
        def run() -> None:
            while not self._stop.wait(interval_s):
                self._record(self.engine.stats())
        threading.Thread(target=run, name="dashboard-load", daemon=True).start()

    def stop_sampling(self) -> None:
        self._stop.set()

    def _record(self, stats: dict[str, int]) -> None:
        now = time.time()
        with self._lock:
            if not self._load or now - self._load[-1]["ts"] >= 1.0:
                self._load.append({"ts": now, "active": stats.get("active", 0),
                                   "queued": stats.get("queued", 0)})

    def _sample(self, receipts: list[tuple[Any, ...]]) -> dict[str, Any]:
        stats = self.engine.stats()
        self._record(stats)
        with self._lock:
            samples = [dict(s) for s in self._load]
        paid = self.payments is not None
        rates = _rates(receipts, [s["ts"] for s in samples]) if paid else [None] * len(samples)
        for sample, rate in zip(samples, rates, strict=True):  # paid tokens out, last 30 s
            sample["tokens_per_s"] = rate
        sample = samples[-1]
        return {"now": {**sample, "max_batch": stats.get("max_batch"),
                        "completed": stats.get("completed"), "failed": stats.get("failed"),
                        "cancelled": stats.get("cancelled"),
                        "adapters_loaded": stats.get("adapters_loaded")},
                "samples": samples}

    def _adapters(self) -> list[dict[str, Any]]:
        engine = self.engine
        if not isinstance(engine, AdapterHost) or not engine.accepts_adapters():
            return []
        return [{"id": a.id, "base_model": a.manifest.base_model, "rank": a.manifest.rank,
                 "examples": a.manifest.examples, "created": a.manifest.created}
                for a in engine.list_adapters()]

    def _jobs(self) -> list[dict[str, Any]]:
        if self.jobs is None:
            return []
        return [{"id": j.id, "status": j.status, "model": j.model,
                 "fine_tuned_model": j.fine_tuned_model, "created_at": j.created_at,
                 "finished_at": j.finished_at, "trained_tokens": j.trained_tokens,
                 "trained_steps": j.trained_steps, "charged": j.charged,
                 "max_charge": j.max_charge}
                for j in sorted(self.jobs.all_jobs(), key=lambda j: -j.created_at)[:50]]


def _rates(receipts: list[tuple[Any, ...]], moments: list[float]) -> list[float]:
    """Tokens out per second over the :data:`_RATE_WINDOW_S` before each of ``moments``
    (``receipts`` in time order: prefix sums and bisection)."""
    times = [float(r[0]) for r in receipts]
    totals = [0, *accumulate(int(r[3]) for r in receipts)]
    return [(totals[bisect_right(times, at)] - totals[bisect_right(times, at - _RATE_WINDOW_S)])
            / _RATE_WINDOW_S for at in moments]


def _earnings_series(ledger: dict[str, list[tuple[Any, ...]]]) -> dict[str, Any]:
    """Cumulative charged, claimed and settled amounts per time bucket."""
    events = ([(r[0], "charged", r[4]) for r in ledger["receipts"]]
              + [(c[0], "claimed", c[2]) for c in ledger["claims"]]
              + [(s[0], "settled", s[1]) for s in ledger["settlements"]])
    if not events:
        return {"width": 60, "buckets": [], "charged": [], "claimed": [], "settled": []}
    events.sort()
    width = bucket_width(events[0][0], time.time())
    start, end = floor_to(events[0][0], width), floor_to(time.time(), width)
    buckets = list(range(start, end + width, width))
    per: dict[str, list[int]] = {k: [0] * len(buckets) for k in ("charged", "claimed", "settled")}
    for ts, kind, amount in events:
        per[kind][(floor_to(ts, width) - start) // width] += int(amount)
    for values in per.values():
        for i in range(1, len(values)):
            values[i] += values[i - 1]
    return {"width": width, "buckets": buckets, **per}
