"""The node's metrics take what a paid request is charged from the payment response the
paid path noted (node/metrics.py: ``note_payment_response``), not by decoding the
``PAYMENT-RESPONSE`` header back: the receipt's request id and amount are the record's,
a response without a readable receipt changes nothing, and outside an observed request
noting is a no-op."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from agoranet.api.requestlog import RequestObserver, RequestRecord
from agoranet.node.metrics import NodeMetrics, note_payment_response
from fakes import FakeEngine

pytestmark = pytest.mark.timeout(30)
PATH = "/v1/chat/completions"


async def observed(response: dict[str, Any] | None) -> tuple[list[RequestRecord], NodeMetrics]:
    metrics = NodeMetrics(FakeEngine())
    done: list[RequestRecord] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if response is not None:
            note_payment_response(response)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"payment-response", b"not base64!")]})
        await send({"type": "http.response.body", "body": b"{}"})

    def on_done(record: RequestRecord) -> None:
        done.append(record)
        metrics.request_done(record)

    observer = RequestObserver(app, paths=[PATH], on_done=on_done,
                               on_start=metrics.request_started, on_message=metrics.message)
    scope = {"type": "http", "method": "POST", "path": PATH, "headers": []}

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    await observer(scope, receive, send)
    return done, metrics


def receipted(metrics: NodeMetrics) -> float:
    value = metrics.registry.get_sample_value("agoranet_node_receipted_base_units_total",
                                              {"model": "-"})
    return value or 0.0


async def test_the_noted_receipt_is_what_the_request_is_charged() -> None:
    done, metrics = await observed({"success": True, "extra": {
        "receipt": {"requestId": "req-1", "amount": "42"}}})
    assert [(r.request_id, r.amount) for r in done] == [("req-1", 42)]
    assert receipted(metrics) == 42


@pytest.mark.parametrize("response", [
    None, {}, {"extra": "x"}, {"extra": {"receipt": {"requestId": "r"}}},
    {"extra": {"receipt": {"requestId": "r", "amount": "many"}}}])
async def test_no_readable_receipt_charges_nothing(response: dict[str, Any] | None) -> None:
    done, metrics = await observed(response)
    assert [(r.request_id, r.amount) for r in done] == [(None, 0)]
    assert receipted(metrics) == 0


def test_noting_outside_an_observed_request_does_nothing() -> None:
    note_payment_response({"extra": {"receipt": {"requestId": "r", "amount": "1"}}})
