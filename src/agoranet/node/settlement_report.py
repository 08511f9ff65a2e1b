"""A log line per claim and settle transaction of the node, and their counters.

:meth:`SettlementReport.tick` runs one :meth:`~agoranet.payments.accept.settlement.Settler.tick`
(in the settlement loop's worker thread) and reports what it did: per channel claimed,
the amount that claim moved (the channel's claimed total before and after), the
transaction and ``ok``; per channel whose claim failed, ``failed``; the settle's amount
and transaction, or its error. A tick that did nothing at all (the chain down) is one
line with outcome ``failed``. Amounts in base units; no voucher, signature or key.
"""

from __future__ import annotations

from agoranet.api.logformat import log_event
from agoranet.errors import AgoranetError
from agoranet.node.metrics import NodeMetrics
from agoranet.payments.accept.settlement import SettleOutcome, Settler

__all__ = ["SettlementReport"]


class SettlementReport:
    def __init__(self, metrics: NodeMetrics | None = None) -> None:
        self.metrics = metrics

    def tick(self, settler: Settler, *, force: bool = False) -> SettleOutcome | None:
        """``settler.tick(force=force)``, reported; its outcome, or its error raised."""
        before = {c.channel_id: c.claimed for c in settler.ledger.claim_candidates()}
        try:
            outcome = settler.tick(force=force)
        except AgoranetError as exc:
            self._count("claim", "failed")
            log_event("settlement", component="node", outcome="failed", error=str(exc)[:300])
            raise
        if outcome is not None:
            self.report(outcome, before)
        return outcome

    def report(self, outcome: SettleOutcome, before: dict[str, int]) -> None:
        """Log and count ``outcome``; ``before``: each channel's claimed total before it."""
        if outcome.claimed:
            self._count("claim", "ok")
        for channel, total in outcome.claimed.items():
            log_event("claim", component="node", channel=channel, amount=total - before.get(channel, total),
                      claimed_total=total, tx=outcome.claim_tx, reason=outcome.reason,
                      outcome="ok")
        for channel in outcome.failed:
            self._count("claim", "failed")
            log_event("claim", component="node", channel=channel, amount=0, tx=None, reason=outcome.reason,
                      outcome="failed")
        if outcome.settle_tx or outcome.settled:
            self._count("settle", "ok")
            log_event("settle", component="node", amount=outcome.settled, tx=outcome.settle_tx, outcome="ok")
        elif outcome.settle_error:
            self._count("settle", "failed")
            log_event("settle", component="node", amount=0, tx=None, outcome="failed",
                      error=outcome.settle_error[:300])

    def _count(self, kind: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.transactions.labels(kind, outcome).inc()
