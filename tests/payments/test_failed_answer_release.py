"""A failed answer frees its channel before the buyer sees the failure.

The node's payment middleware releases a request's hold (charging nothing) as the error's
status line goes out, not after the whole response: a buyer that reads the error and pays
again on the same channel at once finds the channel free, not held by the failed request.
In process (the acceptor on a fake chain, a real SQLite ledger); the same middleware rules
are in test_payment_middleware_rules.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Message

from agoranet.payments import x402wire

from .acceptor_support import CID, MAX, pay
from .paid_support import BODY
from .test_payment_middleware_rules import Node, cost, invariants, node, post

__all__ = ["node"]  # the fixture, shared with the middleware's rule tests

pytestmark = pytest.mark.timeout(30)


async def call(app: Any, payment: str, seen: list[tuple[int, str | None]],
               node: Node) -> list[Message]:
    """One paid request through the ASGI interface; at each status line, the status and
    the request holding the channel then."""
    sent: list[Message] = []
    request = json.dumps(BODY).encode()

    async def receive() -> Message:
        return {"type": "http.request", "body": request, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            record = node.ledger.channel(CID)
            seen.append((message["status"], None if record is None else record.pending_request))
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "query_string": b"", "root_path": "", "http_version": "1.1",
             "server": ("node", 80), "client": ("127.0.0.1", 5),
             "headers": [(b"content-type", b"application/json"),
                         (x402wire.PAYMENT_SIGNATURE.lower().encode(), payment.encode()),
                         (b"x-request-id", b"failing-1")]}
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("status", [500, 503])
async def test_a_failed_answer_releases_its_hold_before_its_status_goes_out(
        node: Node, status: int) -> None:
    app = node.app()
    node.fail_with = status
    seen: list[tuple[int, str | None]] = []
    sent = await call(app, pay(MAX), seen, node)
    assert seen == [(status, None)]  # released (nothing charged) before the buyer hears
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert x402wire.PAYMENT_RESPONSE.lower().encode() not in dict(start["headers"])
    assert node.charged() == 0
    node.fail_with = None
    answered = await post(app, pay(MAX))  # the same voucher pays the next request
    assert answered.status_code == 200
    assert node.charged() == cost(3, 5)
    invariants(node)
