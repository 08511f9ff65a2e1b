"""The node's Prometheus metrics and per-request log lines.

Built beside the money path, never inside it:

* every request to a served route (:class:`~agoranet.api.requestlog.RequestObserver`,
  outside the payment middleware) moves the request counter, the latency histogram and,
  for a stream, the time-to-first-byte histogram; the service notes the model and the
  tokens (:func:`note_started`, :func:`note_finished`) and the receipt that went out with
  the answer (its ``PAYMENT-RESPONSE``, noted by the paid path before it is encoded:
  :func:`note_payment_response`; or a stream's last receipt event) gives what the
  request was charged;
* at scrape time the ledger gives the earnings (charged, claimed, settled: counters in
  base units, exactly what the ledger holds), what is unclaimed and the channels, and
  the engine its active sequences and queue depth;
* every claim and settle transaction of the settlement loop moves a counter and is
  logged (see :class:`~agoranet.node.settlement_report.SettlementReport`).

Labels are kept small: ``model`` (once the engine took the request, else ``-``) and
``outcome``. A log line has the request id, model, tokens, amount, outcome and times;
never a prompt, a key, a signature or a voucher.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import Message

from agoranet.api.logformat import log_event
from agoranet.api.requestlog import RequestRecord, current_request
from agoranet.engines.base import Engine, Finish, Prepared
from agoranet.payments.accept.ledger import Ledger

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["OBSERVED_PATHS", "NodeMetrics", "note_finished", "note_payment_response",
           "note_started"]

# The routes whose requests are counted and logged.
OBSERVED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_RECEIPT_MARK = b'"agoranet_receipt"'


def note_started(prepared: Prepared) -> None:
    """The request being observed (if any) is generating for ``prepared``'s model."""
    record = current_request()
    if record is not None:
        record.model = prepared.request.model


def note_payment_response(response: dict[str, Any]) -> None:
    """The request being observed (if any) goes out with ``response`` (the payment
    response of its ``PAYMENT-RESPONSE`` header, before encoding): its receipt says what
    the request is charged (read here, not decoded back from the header)."""
    record = current_request()
    if record is not None:
        extra = response.get("extra")
        _charged(record, _receipt_of(extra.get("receipt")) if isinstance(extra, dict)
                 else None)


def note_finished(finish: Finish) -> None:
    """The request being observed (if any) used these tokens."""
    record = current_request()
    if record is not None:
        record.prompt_tokens = finish.prompt_tokens
        record.completion_tokens = finish.completion_tokens


class NodeMetrics:
    """The metrics of one node, in a registry of their own (several nodes may run in one
    process)."""

    def __init__(self, engine: Engine, ledger: Ledger | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("agoranet_node_requests", "Requests to the served routes",
                                ["model", "outcome"], registry=r)
        self.latency = Histogram("agoranet_node_request_latency_seconds",
                                 "From a request's arrival to its answer's end", ["model"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("agoranet_node_ttft_seconds",
                              "A streamed answer's time to its first bytes", ["model"],
                              buckets=_TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("agoranet_node_prompt_tokens", "Prompt tokens served",
                                     ["model"], registry=r)
        self.completion_tokens = Counter("agoranet_node_completion_tokens",
                                         "Completion tokens served", ["model"], registry=r)
        self.receipted = Counter("agoranet_node_receipted_base_units",
                                 "Charged by the receipts sent with the answers (base units)",
                                 ["model"], registry=r)
        self.payment_required = Counter("agoranet_node_payment_required",
                                        "Requests answered 402", registry=r)
        self.in_flight = Gauge("agoranet_node_requests_in_flight", "Requests being served now",
                               registry=r)
        self.transactions = Counter("agoranet_node_settlement_transactions",
                                    "Claim and settle transactions", ["kind", "outcome"],
                                    registry=r)
        r.register(_StateCollector(engine, ledger))

    def request_started(self, record: RequestRecord) -> None:
        self.in_flight.inc()

    def message(self, record: RequestRecord, message: Message) -> None:
        """A message of the response: the amount of a receipt in it, if any."""
        if message["type"] == "http.response.body":
            body = message.get("body", b"")
            if _RECEIPT_MARK in body:
                _charged(record, _receipt_amount_of_events(body))

    def request_done(self, record: RequestRecord) -> None:
        """A request ended: count it and log its line."""
        self.in_flight.dec()
        outcome = record.outcome
        self.requests.labels(record.model, outcome).inc()
        self.latency.labels(record.model).observe(record.latency_ms / 1000)
        if record.first_byte_ms is not None:
            self.ttft.labels(record.model).observe(record.first_byte_ms / 1000)
        self.prompt_tokens.labels(record.model).inc(record.prompt_tokens)
        self.completion_tokens.labels(record.model).inc(record.completion_tokens)
        self.receipted.labels(record.model).inc(record.amount)
        if record.status == 402:
            self.payment_required.inc()
        log_event("request", component="node", request_id=record.request_id, path=record.path,
                  model=record.model, prompt_tokens=record.prompt_tokens,
                  completion_tokens=record.completion_tokens, amount=record.amount,
                  status=record.status, outcome=outcome, stream=record.stream,
                  latency_ms=round(record.latency_ms, 1),
                  ttft_ms=(round(record.first_byte_ms, 1)
                           if record.first_byte_ms is not None else None))


def _charged(record: RequestRecord, found: tuple[str, int] | None) -> None:
    """The latest receipt sent with the answer says what the request is charged."""
    if found is not None:
        record.request_id, record.amount = found


def _receipt_of(data: object) -> tuple[str, int] | None:
    if not isinstance(data, dict):
        return None
    try:
        return str(data["requestId"]), int(data["amount"])
    except (KeyError, TypeError, ValueError):
        return None


def _receipt_amount_of_events(body: bytes) -> tuple[str, int] | None:
    """The last receipt among the SSE events of ``body`` (running or final)."""
    found = None
    for line in body.splitlines():
        if not line.startswith(b"data:") or _RECEIPT_MARK not in line:
            continue
        try:
            event = json.loads(line[5:])
        except ValueError:
            continue
        if isinstance(event, dict):
            found = _receipt_of(event.get("agoranet_receipt")) or found
    return found


class _StateCollector(Collector):
    """What the node holds now: its ledger's earnings and its engine's load."""

    def __init__(self, engine: Engine, ledger: Ledger | None) -> None:
        self.engine = engine
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        stats = self.engine.stats()
        for key, name, doc in (("active", "agoranet_node_active_sequences",
                                "Sequences being generated"),
                               ("queued", "agoranet_node_queue_depth",
                                "Requests waiting for a generation slot")):
            if key in stats:
                gauge = GaugeMetricFamily(name, doc)
                gauge.add_metric([], stats[key])
                yield gauge
        if self.ledger is None:
            return
        earnings = self.ledger.earnings()
        for name, doc, value in (
                ("earned", "Charged by receipts, all channels (base units)",
                 sum(e.charged for e in earnings)),
                ("claimed", "Claimed on chain (base units)", sum(e.claimed for e in earnings)),
                ("settled", "Settled to the node (base units)",
                 sum(e.settled for e in earnings))):
            counter = CounterMetricFamily(f"agoranet_node_{name}_base_units", doc)
            counter.add_metric([], value)
            yield counter
        for name, doc, value in (
                ("agoranet_node_unclaimed_base_units", "Charged, not yet claimed",
                 sum(e.unclaimed for e in earnings)),
                ("agoranet_node_pending_settle_base_units", "Claimed, not yet settled",
                 sum(e.pending_settle for e in earnings)),
                ("agoranet_node_channels", "Payment channels in the ledger", len(earnings)),
                ("agoranet_node_channels_failing_claims",
                 "Channels whose claim keeps failing", sum(1 for e in earnings
                                                           if e.claim_failures))):
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], value)
            yield gauge
