"""The settlement loop's log lines and counters (a scripted settler: the loop's logic only;
the real claims are logged in tests/integration/test_metrics_paid.py)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from agoranet.api.logformat import EVENTS_LOGGER, JsonFormatter
from agoranet.errors import PaymentError
from agoranet.node.metrics import NodeMetrics
from agoranet.node.settlement_report import SettlementReport
from agoranet.payments.accept.ledger import ClaimCandidate
from agoranet.payments.accept.settlement import SettleOutcome
from fakes import FakeEngine
from promtext import Scrape


def candidate(channel: str, charged: int, claimed: int) -> ClaimCandidate:
    return ClaimCandidate(channel, "{}", charged, claimed, charged + 100, "0xsig-" + channel,
                          0.0, 1)


@dataclass
class ScriptedLedger:
    candidates: list[ClaimCandidate]

    def claim_candidates(self) -> list[ClaimCandidate]:
        return self.candidates

    def earnings(self) -> list[Any]:
        return []


@dataclass
class ScriptedSettler:
    ledger: ScriptedLedger
    outcomes: list[SettleOutcome | Exception] = field(default_factory=list)

    def tick(self, *, force: bool = False) -> SettleOutcome | None:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(JsonFormatter().format(r)) for r in caplog.records
            if r.name == EVENTS_LOGGER]


def test_each_claim_logs_what_it_moved_and_each_failure_is_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=EVENTS_LOGGER)
    metrics = NodeMetrics(FakeEngine())
    ledger = ScriptedLedger([candidate("0xa", 500, 200), candidate("0xb", 90, 0),
                             candidate("0xc", 40, 10)])
    settler = ScriptedSettler(ledger, [
        SettleOutcome({"0xa": 500, "0xb": 90}, "0xclaim", 590, "0xsettle", "amount",
                      failed=("0xc",)),
        SettleOutcome({}, settle_error="settle failed: reverted", reason="pending settle"),
        PaymentError("claim for 0xc failed: the chain is down")])
    report = SettlementReport(metrics)
    report.tick(settler)  # type: ignore[arg-type]
    report.tick(settler)  # type: ignore[arg-type]
    with pytest.raises(PaymentError):
        report.tick(settler)  # type: ignore[arg-type]
    lines = [{k: v for k, v in e.items() if k not in ("ts", "level", "logger", "message")}
             for e in events(caplog)]
    assert lines == [
        {"event": "claim", "component": "node", "channel": "0xa", "amount": 300,
         "claimed_total": 500, "tx": "0xclaim", "reason": "amount", "outcome": "ok"},
        {"event": "claim", "component": "node", "channel": "0xb", "amount": 90,
         "claimed_total": 90, "tx": "0xclaim", "reason": "amount", "outcome": "ok"},
        {"event": "claim", "component": "node", "channel": "0xc", "amount": 0, "tx": None,
         "reason": "amount", "outcome": "failed"},
        {"event": "settle", "component": "node", "amount": 590, "tx": "0xsettle",
         "outcome": "ok"},
        {"event": "settle", "component": "node", "amount": 0, "tx": None, "outcome": "failed",
         "error": "settle failed: reverted"},
        {"event": "settlement", "component": "node", "outcome": "failed",
         "error": "claim for 0xc failed: the chain is down"}]
    assert "0xsig" not in json.dumps(lines)  # no voucher signature
    from prometheus_client import generate_latest

    scrape = Scrape(generate_latest(metrics.registry).decode())
    name = "agoranet_node_settlement_transactions_total"
    assert (scrape.value(name, kind="claim", outcome="ok"),
            scrape.value(name, kind="claim", outcome="failed"),
            scrape.value(name, kind="settle", outcome="ok"),
            scrape.value(name, kind="settle", outcome="failed")) == (1, 2, 1, 1)
