"""The gateway's Prometheus metrics and per-request log lines.

Built from what the gateway already records, never from the money path itself:

* every spend-log row (:class:`~agoranet.gateway.spendlog.SpendRow`, one per node segment,
  audit, dispute, ...) moves the spend counter by its amount in base units, and a
  request's rows its token counters and the node's time-to-first-token histogram;
* every request to an OpenAI route (:class:`~agoranet.api.requestlog.RequestObserver`)
  moves the request counter and latency histogram, and its relay's result
  (:func:`track_relay`) gives its failovers, nodes, tokens and amount, for its log line;
* at scrape time: the budget, each node's channel (deposit, receipted charges), the
  audits' verdicts per node (from the reputation store) and the requests in flight.

Labels are kept small: ``model`` (once a node is known to serve it, else ``-``), ``node``
(a node's URL, from the directory) and ``outcome``. A log line has the request id, model,
nodes, tokens, amount, outcome and times; never a prompt, a key or a signature.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agoranet.api.logformat import log_event
from agoranet.api.requestlog import UNKNOWN, RequestRecord, current_request
from agoranet.gateway.relay import RelayResult
from agoranet.gateway.spendlog import SpendRow

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from agoranet.gateway.service import GatewayService

__all__ = ["OBSERVED_PATHS", "GatewayMetrics", "track_relay"]

# The routes whose requests are counted and logged (a route a gateway lacks is never hit).
OBSERVED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses",
                  "/v1/embeddings")
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_NOT_REQUESTS = frozenset({"audit", "disputed", "resynced", "held", "lost"})


def track_relay(result: RelayResult, model: str) -> None:
    """Tell the request being observed (if any) which relay serves it, for ``model``."""
    record = current_request()
    if record is not None:
        record.source = result
        record.model = model
        record.request_id = result.request_id


class GatewayMetrics:
    """The metrics of one gateway, in a registry of their own (several gateways may run
    in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("agoranet_gateway_requests", "Requests to the OpenAI routes",
                                ["model", "outcome"], registry=r)
        self.latency = Histogram("agoranet_gateway_request_latency_seconds",
                                 "From a request's arrival to its answer's end",
                                 ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.failovers = Counter("agoranet_gateway_failovers",
                                 "Nodes that failed a request and were replaced", ["model"],
                                 registry=r)
        self.payment_required = Counter("agoranet_gateway_payment_required",
                                        "Requests answered 402", ["model"], registry=r)
        self.prompt_tokens = Counter("agoranet_gateway_prompt_tokens",
                                     "Prompt tokens of the requests' answers, per node",
                                     ["model", "node"], registry=r)
        self.completion_tokens = Counter("agoranet_gateway_completion_tokens",
                                         "Completion tokens bought, per node",
                                         ["model", "node"], registry=r)
        self.spent = Counter("agoranet_gateway_spent_base_units",
                             "What the spend log counts as spent (base units), by row outcome",
                             ["model", "node", "outcome"], registry=r)
        self.ttft = Histogram("agoranet_gateway_node_ttft_seconds",
                              "A node's time to its first token, per answer segment",
                              ["model", "node"], buckets=_TTFT_BUCKETS, registry=r)
        self.in_flight = Gauge("agoranet_gateway_requests_in_flight",
                               "Requests being served now", registry=r)
        self._service: GatewayService | None = None
        r.register(_StateCollector(self))

    def attach(self, service: GatewayService) -> None:
        """Count ``service``'s spend rows, and read its state at scrape time."""
        self._service = service
        service.spend.listeners.append(self.spend_row)

    def request_started(self, record: RequestRecord) -> None:
        self.in_flight.inc()

    def spend_row(self, row: SpendRow) -> None:
        """A spend-log row: its amount is spent; a request's row, its tokens bought."""
        model = row.model or UNKNOWN
        self.spent.labels(model, row.node, row.outcome).inc(row.amount)
        if row.outcome in _NOT_REQUESTS:
            return
        self.prompt_tokens.labels(model, row.node).inc(row.prompt_tokens)
        self.completion_tokens.labels(model, row.node).inc(row.completion_tokens)
        if row.ttft_ms is not None:
            self.ttft.labels(model, row.node).observe(row.ttft_ms / 1000)

    def request_done(self, record: RequestRecord) -> None:
        """A request to an OpenAI route ended: count it and log its line."""
        self.in_flight.dec()
        relay = record.source if isinstance(record.source, RelayResult) else None
        if relay is not None:
            record.nodes = list(relay.nodes)
            record.prompt_tokens, record.completion_tokens = (relay.prompt_tokens,
                                                              relay.completion_tokens)
            record.amount, record.failovers = relay.amount, relay.failovers
        outcome = record.outcome
        self.requests.labels(record.model, outcome).inc()
        self.latency.labels(record.model).observe(record.latency_ms / 1000)
        if record.failovers:
            self.failovers.labels(record.model).inc(record.failovers)
        if record.status == 402:
            self.payment_required.labels(record.model).inc()
        log_event("request", component="gateway", request_id=record.request_id, path=record.path,
                  model=record.model, nodes=record.nodes,
                  prompt_tokens=record.prompt_tokens,
                  completion_tokens=record.completion_tokens, amount=record.amount,
                  failovers=record.failovers, status=record.status, outcome=outcome,
                  stream=record.stream, latency_ms=round(record.latency_ms, 1),
                  ttft_ms=(round(record.first_byte_ms, 1)
                           if record.first_byte_ms is not None else None))


class _StateCollector(Collector):
    """What the gateway holds now, read at scrape time."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        service = self.metrics._service
        if service is None:
            return
        budget = service.budget
        for name, doc, value in (
                ("spent", "Spent, as the budget counts it (base units)", budget.spent),
                ("reserved", "Reserved by requests in flight (base units)", budget.reserved),
                ("limit", "The global budget (base units; -1: none)",
                 -1 if budget.limit is None else budget.limit)):
            gauge = GaugeMetricFamily(f"agoranet_gateway_budget_{name}_base_units", doc)
            gauge.add_metric([], value)
            yield gauge
        yield from _channels(service)
        yield from _audits(service)


def _channels(service: GatewayService) -> Iterator[Metric]:
    deposited = GaugeMetricFamily("agoranet_gateway_channel_deposit_base_units",
                                  "Deposited in the node's channel", labels=["node"])
    charged = GaugeMetricFamily("agoranet_gateway_channel_charged_base_units",
                                "Charged on the node's channel by its receipts",
                                labels=["node"])
    remaining = GaugeMetricFamily("agoranet_gateway_channel_remaining_base_units",
                                  "Deposit not yet charged on the node's channel",
                                  labels=["node"])
    for payer in service.payers.payers() if service.payers is not None else []:
        state = payer.state
        if state is None:
            continue
        deposited.add_metric([payer.root], state.deposited)
        charged.add_metric([payer.root], state.charged)
        remaining.add_metric([payer.root], max(0, state.deposited - state.charged))
    yield from (deposited, charged, remaining)


def _audits(service: GatewayService) -> Iterator[Metric]:
    audits = CounterMetricFamily("agoranet_gateway_audits",
                                 "Background audits' verdicts per node (reputation store)",
                                 labels=["node", "verdict"])
    for node in list(service.directory.nodes.values()):
        if node.reputation is None:
            continue
        record = node.reputation.record(node.identity)
        audits.add_metric([node.url, "passed"], record.audits_passed)
        audits.add_metric([node.url, "failed"], record.audits_failed)
    yield audits
