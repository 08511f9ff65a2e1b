"""The dashboards' data from their stores: time buckets, percentiles, request paths."""

from __future__ import annotations

from typing import Any

from agoranet.dashboard.gateway_view import _latency, _recent, _totals
from agoranet.dashboard.node_view import _earnings_series, _rates
from agoranet.dashboard.series import bucket_width, percentile

NAMES = {"http://a/v1": "a", "http://b/v1": "b"}


def _row(ts: float, rid: str, node: str, amount: int, outcome: str, *,
         receipted: bool = True, key: str = "owner") -> tuple[Any, ...]:
    # ts, request_id, model, node, tokens, amount, ttft_ms, duration_ms, outcome, receipt, key
    return (ts, rid, "tiny", node, 10, amount, 50.0, 200.0, outcome, receipted, key)


def test_bucket_widths_and_percentiles() -> None:
    assert bucket_width(0, 30) == 1
    assert bucket_width(0, 3600) == 60
    assert bucket_width(0, 86400 * 10) == 4 * 3600
    assert percentile([], 0.5) is None
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3
    assert percentile(list(range(1, 101)), 0.95) == 95
    assert percentile([7], 0.99) == 7


def test_a_failover_is_one_request_with_two_hops() -> None:
    rows = [_row(1.0, "r1", "http://a/v1", 100, "ok"),
            _row(2.0, "r2", "http://a/v1", 30, "partial"),
            _row(2.0, "r2", "http://a/v1", 5, "unreceipted", receipted=False),
            _row(3.0, "r2", "http://b/v1", 70, "ok"),
            _row(4.0, "audit-1", "http://b/v1", 9, "audit")]
    recent = _recent(rows, NAMES)
    assert [r["id"] for r in recent] == ["r2", "r1"]  # newest first, audits aside
    failed_over = recent[0]
    assert [(h["node"], h["outcome"], h["amount"]) for h in failed_over["path"]] == [
        ("a", "partial", 35), ("b", "ok", 70)]
    assert failed_over["failovers"] == 1 and failed_over["amount"] == 105
    assert failed_over["path"][0]["receipted"] is False
    assert recent[1]["failovers"] == 0


def test_totals_count_receipted_and_audits() -> None:
    rows = [_row(1.0, "r1", "http://a/v1", 100, "ok", key="agent"),
            _row(2.0, "r2", "http://b/v1", 40, "ok", receipted=False, key="agent"),
            _row(3.0, "x", "http://b/v1", 9, "audit", key="-")]
    by_node = {t["name"]: t for t in _totals(rows, "node", NAMES)}
    assert by_node["a"]["receipted"] == 100 and by_node["b"]["receipted"] == 9
    assert by_node["b"]["audits"] == 9 and by_node["b"]["requests"] == 2
    by_key = {t["name"]: t["amount"] for t in _totals(rows, "key", NAMES)}
    assert by_key == {"agent": 140, "-": 9}


def test_latency_percentiles_per_bucket() -> None:
    rows = [(float(t), f"r{t}", "tiny", "http://a/v1", 1, 1, 10.0 * t, 100.0 * t, "ok", 1, "-")
            for t in range(1, 11)]
    latency = _latency(rows)
    assert latency["width"] == 1 and len(latency["buckets"]) == 10
    assert latency["p50"][0] == 100.0 and latency["overall"]["p50"] == 500.0
    assert latency["overall"]["ttft_p95"] == 100.0


def test_node_earnings_are_cumulative_and_rates_windowed() -> None:
    now = 1_000_000.0
    ledger: dict[str, list[tuple[Any, ...]]] = {
        "receipts": [(now - 20, "q1", 5, 30, 100), (now - 10, "q2", 5, 60, 200)],
        "claims": [(now - 5, "0xc", 300, "0xtx", True)],
        "settlements": [(now - 4, 300, "0xtx2")]}
    series = _earnings_series(ledger)
    assert series["charged"][-1] == 300 and series["claimed"][-1] == 300
    assert series["settled"][-1] == 300
    assert series["charged"] == sorted(series["charged"])
    assert _rates(ledger["receipts"], [now - 15, now, now + 15, now + 25]) == [1.0, 3.0, 2.0, 0.0]
