"""What the gateway's dashboard shows, as JSON: read from its spend log, nodes, channels.

Nothing here reveals a secret: spend rows name a gateway key by its name (never its
secret), prompts are never logged, receipts and vouchers are summarised as amounts and
"backed by a signed receipt" without their signatures. Channels' on-chain state is read
through the payers' own chain connections, in a thread, at most every few seconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from agoranet.dashboard.series import bucket_width, bucketed, floor_to, percentile
from agoranet.errors import AgoranetError
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.service import GatewayService

__all__ = ["GatewayView"]

_RECENT = 40  # requests in the "recent requests" table
_WINDOW = 5000  # spend rows read for the time charts (the latest)
_CHANNEL_TTL_S = 5.0
_FAILED = ("partial", "failed")


class GatewayView:
    def __init__(self, service: GatewayService, spend_log: Path) -> None:
        self.service = service
        self.spend_log = spend_log
        self._channels: tuple[float, list[dict[str, Any]]] | None = None
        self._channel_lock = asyncio.Lock()

    # -- the spend log ---------------------------------------------------------------

    def _rows(self) -> list[tuple[Any, ...]]:
        if not self.spend_log.exists():
            return []
        db = sqlite3.connect(f"file:{self.spend_log}?mode=ro", uri=True)
        try:
            return db.execute(
                "SELECT ts, request_id, model, node, prompt_tokens + completion_tokens, amount,"
                " ttft_ms, duration_ms, outcome, receipt IS NOT NULL, COALESCE(key, '-')"
                " FROM (SELECT * FROM spend ORDER BY id DESC LIMIT ?) ORDER BY ts",
                (_WINDOW,)).fetchall()
        finally:
            db.close()

    async def data(self) -> dict[str, Any]:
        """Everything but the channels: spend, requests, latency, nodes, audits, budget (the
        log read in a thread; the nodes' state on the event loop, where it changes)."""
        rows = await asyncio.to_thread(self._rows)
        names = self._node_names()
        budget = self.service.budget
        total = sum(r[5] for r in rows)
        receipted = sum(r[5] for r in rows if r[9])
        return {
            "now": time.time(),
            "budget": {"limit": budget.limit, "spent": budget.spent, "reserved": budget.reserved},
            "spend_total": total, "receipted": receipted,
            "receipted_share": receipted / total if total else None,
            "spend": _spend_series(rows, names),
            "totals": {by: _totals(rows, by, names) for by in ("model", "node", "key", "day")},
            "requests": _recent(rows, names),
            "latency": _latency(rows),
            "nodes": [self._node_row(n) for n in self.service.directory.nodes.values()],
            "audits": self._audits(names),
            "payer": self.service.payers.address if self.service.payers is not None else None,
        }

    def _node_names(self) -> dict[str, str]:
        return {url: _short_url(url) for url in self.service.directory.nodes}

    def _node_row(self, node: NodeState) -> dict[str, Any]:
        record = node.reputation.record(node.identity) if node.reputation else None
        ban = node.lasting_ban()
        banned = node.banned()
        return {
            "url": node.url, "name": _short_url(node.url), "identity": node.identity,
            "models": list(node.offered()),
            "price": ({m.id: [m.price.input_per_million, m.price.output_per_million]
                       for m in node.offer.models} if node.offer else {}),
            "ttft_ms": node.ttft_ms, "tokens_per_s": node.tokens_per_s,
            "successes": node.successes, "failures": node.failures,
            "success_rate": (node.successes / (node.successes + node.failures)
                             if node.successes + node.failures else None),
            "score": round(node.reliability, 4),
            "audits_passed": record.audits_passed if record else
            sum(1 for a in node.audits if a.startswith("passed")),
            "audits_failed": record.audits_failed if record else
            sum(1 for a in node.audits if not a.startswith("passed")),
            "banned": banned,
            "ban_reason": (ban.reason if ban else (node.events[-1] if node.events else None))
            if banned else None,
            "banned_until": ban.until if ban and banned else (node.banned_until or None)
            if banned else None,
            "offer_error": node.offer_error,
        }

    def _audits(self, names: dict[str, str]) -> dict[str, Any]:
        auditor = self.service.auditor
        verdicts = [{"node": names.get(n.url, n.url), "verdict": v}
                    for n in self.service.directory.nodes.values() for v in n.audits]
        return {"status": auditor.status() if auditor is not None else None,
                "verdicts": verdicts[-50:]}

    # -- channels (chain reads) ------------------------------------------------------

    async def channels(self) -> list[dict[str, Any]]:
        async with self._channel_lock:
            cached = self._channels
            if cached is not None and time.monotonic() - cached[0] < _CHANNEL_TTL_S:
                return cached[1]
            rows = await asyncio.to_thread(self._read_channels)
            self._channels = (time.monotonic(), rows)
            return rows

    def _read_channels(self) -> list[dict[str, Any]]:
        payers = self.service.payers
        if payers is None:
            return []
        from agoranet.payments.channels import read_channel

        rows = []
        for payer in payers.payers():
            state = payer.state
            if state is None:
                continue
            row: dict[str, Any] = {
                "node": _short_url(payer.root), "channel": state.channel_id,
                "receiver": payer.node, "deposited": state.deposited, "charged": state.charged,
                "voucher": state.voucher, "receipts": state.receipts,
                "disputed": state.disputed, "dispute": state.dispute or None,
                "balance": None, "claimed": None, "claimable": None, "refundable": None,
                "withdrawal": None, "chain_error": None,
            }
            try:
                info = read_channel(payer.w3, payer.addresses, payer.config)
            except AgoranetError as exc:
                row["chain_error"] = str(exc)
            else:
                # what the node can still claim: up to the highest voucher signed
                claimable = max(0, min(state.voucher, info.balance) - info.total_claimed)
                row.update(balance=info.balance, claimed=info.total_claimed,
                           claimable=claimable,
                           refundable=max(0, info.available - claimable),
                           withdrawal=({"amount": info.withdraw_amount,
                                        "after": info.finalize_after}
                                       if info.finalize_after is not None else None))
            rows.append(row)
        return rows


def _short_url(url: str) -> str:
    return url.removeprefix("http://").removeprefix("https://").removesuffix("/v1")


def _spend_series(rows: list[tuple[Any, ...]], names: dict[str, str]) -> dict[str, Any]:
    """Spend per time bucket, one series per node (stacked in the chart)."""
    paid = [r for r in rows if r[5]]
    if not paid:
        return {"width": 60, "buckets": [], "series": {}}
    width = bucket_width(paid[0][0], time.time())
    start, end = floor_to(paid[0][0], width), floor_to(time.time(), width)
    buckets = list(range(start, end + width, width))
    series: dict[str, list[int]] = {}
    for ts, node, amount in ((r[0], r[3], r[5]) for r in paid):
        values = series.setdefault(names.get(node, _short_url(node)), [0] * len(buckets))
        values[(floor_to(ts, width) - start) // width] += amount
    return {"width": width, "buckets": buckets, "series": series}


def _totals(rows: list[tuple[Any, ...]], by: str, names: dict[str, str]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for ts, request_id, model, node, tokens, amount, _, _, outcome, receipted, key in rows:
        name = {"model": model or "-", "node": names.get(node, _short_url(node)), "key": key,
                "day": time.strftime("%Y-%m-%d", time.gmtime(ts))}[by]
        group = groups.setdefault(name, {"name": name, "requests": set(), "tokens": 0,
                                         "amount": 0, "receipted": 0, "audits": 0})
        group["requests"].add(request_id)
        group["tokens"] += tokens
        group["amount"] += amount
        group["receipted"] += amount if receipted else 0
        group["audits"] += amount if outcome == "audit" else 0
    out = [{**g, "requests": len(g["requests"])} for g in groups.values()]
    return sorted(out, key=lambda g: -int(g["amount"]))


def _recent(rows: list[tuple[Any, ...]], names: dict[str, str]) -> list[dict[str, Any]]:
    """The latest requests (audits aside), each with its path through nodes."""
    requests: dict[str, dict[str, Any]] = {}
    for ts, request_id, model, node, tokens, amount, ttft, duration, outcome, receipted, key \
            in rows:
        if outcome == "audit":
            continue
        entry = requests.setdefault(request_id, {
            "id": request_id, "ts": ts, "model": model, "key": key, "path": [],
            "amount": 0, "tokens": 0, "failovers": 0, "ttft_ms": None, "duration_ms": 0.0})
        name = names.get(node, _short_url(node))
        last = entry["path"][-1] if entry["path"] else None
        if outcome == "unreceipted" and last is not None and last["node"] == name:
            # tokens of that cut stream beyond its last receipt: the same hop, not a new one
            last["amount"] += amount
            last["receipted"] = False
        else:
            entry["path"].append({"node": name, "outcome": outcome, "amount": amount,
                                  "receipted": bool(receipted)})
        entry["amount"] += amount
        entry["tokens"] += tokens
        entry["duration_ms"] += duration
        entry["failovers"] += outcome in _FAILED
        entry["model"] = entry["model"] or model
        if entry["ttft_ms"] is None and ttft is not None:
            entry["ttft_ms"] = ttft
    latest = sorted(requests.values(), key=lambda e: -float(e["ts"]))[:_RECENT]
    for entry in latest:
        entry["outcome"] = entry["path"][-1]["outcome"]
    return latest


def _latency(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Percentiles of request duration and time to first token per time bucket."""
    served = [r for r in rows if r[8] in ("ok", "partial")]
    if not served:
        return {"width": 60, "buckets": [], "p50": [], "p95": [], "p99": [], "ttft_p50": [],
                "ttft_p95": [], "overall": {}}
    width = bucket_width(served[0][0], served[-1][0], buckets=40)
    durations = bucketed(((r[0], r[7]) for r in served), width)
    ttfts = bucketed(((r[0], r[6]) for r in served if r[6] is not None), width)
    buckets = sorted(durations)
    all_d = [r[7] for r in served]
    all_t = [r[6] for r in served if r[6] is not None]
    return {
        "width": width, "buckets": buckets,
        "p50": [percentile(durations[b], 0.5) for b in buckets],
        "p95": [percentile(durations[b], 0.95) for b in buckets],
        "p99": [percentile(durations[b], 0.99) for b in buckets],
        "ttft_p50": [percentile(ttfts.get(b, []), 0.5) for b in buckets],
        "ttft_p95": [percentile(ttfts.get(b, []), 0.95) for b in buckets],
        "overall": {"p50": percentile(all_d, 0.5), "p95": percentile(all_d, 0.95),
                    "p99": percentile(all_d, 0.99), "ttft_p50": percentile(all_t, 0.5),
                    "ttft_p95": percentile(all_t, 0.95)},
    }
