"""The node's payment middleware rule by rule, in process: what runs unpaid, the 402 it sends,
the receipts of a plain answer and of a stream, and what a failed or abandoned request costs.

The acceptor behind it runs on a fake chain (acceptor_support: a real SQLite ledger, real
receipt signatures); the same node on the real dev chain is in test_paid_node.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send
from x402.schemas import SettleResponse

from agoranet.chain.executor import ChainExecutor
from agoranet.config import NodeSettings
from agoranet.engines.base import GenerationRequest, ModelInfo, Prepared
from agoranet.errors import OverloadedError
from agoranet.market import TokenPrices
from agoranet.node.app import create_app
from agoranet.node.payment_middleware import (
    PAYER_SCOPE_KEY,
    RECEIPT_OBJECT,
    RUNNING_RECEIPT_OBJECT,
    PaymentMiddleware,
)
from agoranet.node.service import InferenceService
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import PaymentAcceptor
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import Receipt, verify_receipt

from .acceptor_support import CID, MAX, NETWORK, NODE, PAYER, WORST, Chain, acceptor, exact_pay, pay
from .paid_support import BODY, CountingEngine, body_then_disconnect, paid_chat_scope

pytestmark = pytest.mark.timeout(30)

PRICES = TokenPrices(1_000_000_000, 2_000_000_000)  # 1000 per prompt token, 2000 per output
COMPLETION = {"model": "fake", "prompt": "one two three", "max_tokens": 5}

MIDDLEWARE_LOGGER = "agoranet.node.payment_middleware"  # not the per-request event lines


def cost(tokens_in: int, tokens_out: int) -> int:
    return 1000 * tokens_in + 2000 * tokens_out


class Engine(CountingEngine):
    """The fake engine (it can state commitments, so a request may ask for them); model
    "broken" fails to prepare, "busy" is overloaded; ``prepares`` counts tokenisations."""

    prepares = 0

    def models(self) -> list[ModelInfo]:
        return [ModelInfo("fake", self.context_length, commitments="toploc"),
                ModelInfo("broken", 64), ModelInfo("busy", 64)]

    async def prepare(self, request: GenerationRequest) -> Prepared:
        self.prepares += 1
        if request.model == "broken":
            raise RuntimeError("tokenizer crashed")
        if request.model == "busy":
            raise OverloadedError("too many requests", retry_after=7)
        return await super().prepare(request)


@dataclass
class Node:
    chain: Chain
    ledger: SqliteLedger
    acceptor: PaymentAcceptor
    engine: Engine
    payers: list[Any] = field(default_factory=list)  # the payer each served request saw
    fail_with: int | None = None  # the app answers this status itself (no inference)

    def app(self, **kw: Any) -> PaymentMiddleware:
        inner = create_app(self.engine, NodeSettings())

        async def recorded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"].startswith("/v1/c"):
                self.payers.append(scope.get(PAYER_SCOPE_KEY))
                if self.fail_with is not None:
                    await send({"type": "http.response.start", "status": self.fail_with,
                                "headers": []})
                    await send({"type": "http.response.body", "body": b"{}"})
                    return
            await inner(scope, receive, send)

        kw.setdefault("prices", lambda model: PRICES)
        return PaymentMiddleware(recorded, acceptor=self.acceptor,
                                 service=InferenceService(self.engine), **kw)

    def charged(self) -> int:
        record = self.ledger.channel(CID)
        return 0 if record is None else record.charged


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    executor = ChainExecutor(workers=1, timeout=1.0)
    ledger = SqliteLedger(":memory:")
    chain = Chain()
    engine = Engine(delay=0.0, max_active=4, max_queue=16)
    yield Node(chain, ledger, acceptor(chain, ledger, executor), engine)
    await engine.aclose()  # in the test's loop: a job left by a client that hung up ends
    ledger.close()
    executor.close()


def client(app: Any, host: str = "node") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


async def post(app: Any, payment: str | None = None, path: str = "/v1/chat/completions",
               body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
    if payment is not None:
        headers[x402wire.PAYMENT_SIGNATURE] = payment
    async with client(app) as c:
        return await c.post(path, json=BODY if body is None else body, headers=headers)


def settle_of(response: httpx.Response) -> dict[str, Any]:
    settle: dict[str, Any] = x402wire.decode_json(response.headers[x402wire.PAYMENT_RESPONSE],
                                                  "x")
    return settle


def invariants(node: Node) -> None:
    """Money: the ledger's charged total is what its receipts add up to, within the voucher."""
    record = node.ledger.channel(CID)
    if record is not None:
        assert record.charged == sum(r.amount for r in node.ledger.receipts(CID))
        assert record.charged <= record.voucher_amount
        assert record.pending_request is None


# ------------------------------------------------------------------ unpaid


async def test_other_routes_and_methods_are_not_charged(node: Node) -> None:
    app = node.app()
    async with client(app) as c:
        assert (await c.get("/v1/models")).status_code == 200
        assert (await c.get("/v1/chat/completions")).status_code == 405
    # a route left out of the paid paths is served without payment
    free_chat = node.app(paid_paths=["/v1/completions"])
    response = await post(free_chat)
    assert response.status_code == 200 and x402wire.PAYMENT_RESPONSE not in response.headers
    assert (await post(free_chat, path="/v1/completions", body=COMPLETION)).status_code == 402
    # a free model is served without payment, plain or streamed
    free = node.app(prices=lambda model: TokenPrices(0, 0))
    response = await post(free)
    assert response.status_code == 200 and x402wire.PAYMENT_RESPONSE not in response.headers
    async with client(free) as c, c.stream("POST", "/v1/chat/completions",
                                           json={**BODY, "stream": True}) as r:
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"
    assert not any(RECEIPT_OBJECT in line for line in lines)
    assert node.engine.calls == 3 and node.charged() == 0


@pytest.mark.parametrize(("body", "status", "code"), [
    ({**BODY, "messages": "not a list"}, 400, None),
    ({**BODY, "model": "nope"}, 404, "model_not_found"),
])
async def test_a_bad_request_is_a_json_error_before_any_payment(
        node: Node, body: dict[str, Any], status: int, code: str | None) -> None:
    response = await post(node.app(), body=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    error = response.json()["error"]
    assert error["message"] and error["code"] == code
    assert x402wire.PAYMENT_REQUIRED not in response.headers and node.engine.calls == 0


async def test_a_failure_to_price_a_request_is_logged_and_overload_says_when_to_retry(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="agoranet.node.payment_middleware"):
        broken = await post(node.app(), body={**BODY, "model": "broken"})
    assert broken.status_code == 500
    assert broken.json()["error"]["message"] == "internal server error"
    (record,) = [r for r in caplog.records if r.getMessage() == "pricing a request failed"]
    assert record.exc_info is not None and str(record.exc_info[1]) == "tokenizer crashed"
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="agoranet.node.payment_middleware"):
        busy = await post(node.app(), body={**BODY, "model": "busy"})
    assert busy.status_code == 429 and busy.headers["retry-after"] == "7"
    assert busy.headers["content-length"] == str(len(busy.content))
    assert not [r for r in caplog.records if r.name == MIDDLEWARE_LOGGER]  # a refusal
    assert node.engine.calls == 0


async def test_an_unpaid_request_gets_the_402_for_its_worst_case(node: Node) -> None:
    for path, body in (("/v1/chat/completions", BODY), ("/v1/completions", COMPLETION)):
        response = await post(node.app(), path=path, body=body)
        assert response.status_code == 402
        assert response.headers["content-type"] == "application/json"
        assert response.headers["content-length"] == str(len(response.content))
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("payment_required", "payment_required")
        assert error["message"] == (f"this request costs up to {WORST} base units: pay with "
                                    "x402 (PAYMENT-SIGNATURE header)")
        x402 = response.json()["x402"]
        assert x402 == x402wire.decode_json(response.headers[x402wire.PAYMENT_REQUIRED], "x")
        assert x402["error"] == "payment_required"
        assert x402["resource"]["url"] == f"http://node{path}"
        batch = x402["accepts"][0]
        assert (batch["scheme"], batch["amount"], batch["payTo"], batch["network"]) == \
            ("batch-settlement", str(WORST), NODE.address, NETWORK)
        assert batch["extra"]["prices"] == {"inputPerMillion": "1000000000",
                                            "outputPerMillion": "2000000000"}
    # commitments cost the offer's surcharge on every token; none by default
    commitments = {**BODY, "agoranet": {"commitments": True}}
    for app, worst in ((node.app(), WORST), (node.app(commitment_price=1_000_000_000),
                                              WORST + 1000 * (3 + 5))):
        response = await post(app, body=commitments)
        assert response.json()["x402"]["accepts"][0]["amount"] == str(worst)
    async with client(node.app(), host="market.example:8443") as c:
        response = await c.post("/v1/chat/completions", json=BODY)
    assert response.json()["x402"]["resource"]["url"] == \
        "http://market.example:8443/v1/chat/completions"
    assert node.engine.calls == 0


async def test_a_refusal_carries_its_status_and_corrective_state(node: Node) -> None:
    app = node.app()
    assert (await post(app, pay(MAX), **{"x-request-id": "r1"})).status_code == 200
    stale = await post(app, pay(MAX), **{"x-request-id": "r2"})
    assert stale.status_code == 402
    x402 = stale.json()["x402"]
    assert stale.json()["error"]["code"] == x402["error"] == \
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    state = x402["accepts"][0]["extra"]["channelState"]
    assert state["chargedCumulativeAmount"] == str(WORST) and state["channelId"] == CID
    again = await post(app, pay(WORST + MAX), **{"x-request-id": "r1"})  # r1 was charged
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "request_already_charged"
    assert node.engine.calls == 1
    invariants(node)


# ------------------------------------------------------------------ paid


async def test_a_paid_answer_carries_its_receipt_and_is_charged_its_usage(node: Node) -> None:
    app = node.app()
    response = await post(app, pay(MAX), **{"x-request-id": "req-1"})
    assert response.status_code == 200, response.text
    settle = settle_of(response)
    receipt = Receipt.from_json(settle["extra"]["receipt"])
    verify_receipt(receipt, NODE.address)
    assert (receipt.request_id, receipt.tokens_in, receipt.tokens_out, receipt.amount) == \
        ("req-1", 3, 5, cost(3, 5))
    assert settle["extra"]["chargedAmount"] == str(cost(3, 5))
    assert None not in settle.values()  # x402's JSON leaves unset fields out
    assert response.headers["content-type"] == "application/json"  # the answer's own headers
    assert response.json()["choices"][0]["message"]["content"] == "w1 w2 w3 w4 w5 "
    assert node.payers == [PAYER.address] and node.charged() == cost(3, 5)
    assert node.engine.prepares == 1  # tokenised once, to price it and to run it
    # shorter than its worst case: charged what it used; a request id is made up if none
    short = await post(app, pay(cost(3, 5) + MAX), body={**BODY, "max_tokens": 2})
    receipt = Receipt.from_json(settle_of(short)["extra"]["receipt"])
    assert re.fullmatch(r"[0-9a-f]{32}", receipt.request_id)
    assert (receipt.amount, receipt.cumulative) == (cost(3, 2), cost(3, 5) + cost(3, 2))
    invariants(node)


async def stream(app: Any, payment: str, request_id: str = "s1",
                 **body: Any) -> list[dict[str, Any] | str]:
    async with client(app) as c, c.stream(
            "POST", "/v1/chat/completions", json={**BODY, "stream": True, **body},
            headers={x402wire.PAYMENT_SIGNATURE: payment, "x-request-id": request_id}) as r:
        assert r.status_code == 200
        lines = [line.removeprefix("data: ") async for line in r.aiter_lines()
                 if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def receipts_in(frames: list[dict[str, Any] | str], kind: str) -> list[Receipt]:
    return [Receipt.from_json(f["agoranet_receipt"]) for f in frames
            if isinstance(f, dict) and f.get("object") == kind]


async def test_a_stream_carries_running_receipts_then_its_final_one(node: Node) -> None:
    frames = await stream(node.app(receipt_every=2), pay(MAX))
    assert frames[-1] == "[DONE]"
    final = frames[-2]
    assert isinstance(final, dict)
    assert (final["object"], final["id"], final["model"], final["choices"]) == \
        (RECEIPT_OBJECT, "receipt-s1", "fake", [])
    assert isinstance(final["created"], int)
    assert final["x402_payment_response"]["extra"]["receipt"] == final["agoranet_receipt"]
    assert final["x402_payment_response"]["extra"]["chargedAmount"] == str(cost(3, 5))
    assert None not in final["x402_payment_response"].values()
    (receipt,) = receipts_in(frames, RECEIPT_OBJECT)
    verify_receipt(receipt, NODE.address)
    assert (receipt.request_id, receipt.amount, receipt.tokens_out) == ("s1", cost(3, 5), 5)
    running = receipts_in(frames, RUNNING_RECEIPT_OBJECT)
    assert [(r.tokens_out, r.amount) for r in running] == [(2, cost(3, 2)), (4, cost(3, 4))]
    frame = next(f for f in frames if isinstance(f, dict)
                 and f.get("object") == RUNNING_RECEIPT_OBJECT)
    assert frame["x402_payment_response"]["extra"]["running"] is True
    assert node.charged() == cost(3, 5) and node.payers == [PAYER.address]
    invariants(node)


async def test_running_receipts_come_every_n_frames_or_never(node: Node) -> None:
    frames = await stream(node.app(receipt_every=3), pay(MAX))
    assert [r.tokens_out for r in receipts_in(frames, RUNNING_RECEIPT_OBJECT)] == [3]
    frames = await stream(node.app(receipt_every=1), pay(cost(3, 5) + 40_000, 40_000), "s0")
    assert [r.tokens_out for r in receipts_in(frames, RUNNING_RECEIPT_OBJECT)] == [1, 2, 3, 4, 5]
    charged = node.charged()
    frames = await stream(node.app(receipt_every=0), pay(charged + MAX), "s2")
    assert receipts_in(frames, RUNNING_RECEIPT_OBJECT) == []
    assert [r.amount for r in receipts_in(frames, RECEIPT_OBJECT)] == [cost(3, 5)]
    frames = await stream(node.app(), pay(charged + cost(3, 5) + 40_000, 40_000), "s3",
                          max_tokens=17)
    assert [r.tokens_out for r in receipts_in(frames, RUNNING_RECEIPT_OBJECT)] == [16]
    invariants(node)


async def test_a_failed_answer_is_not_charged(node: Node) -> None:
    app = node.app()
    node.fail_with = 503
    failed = await post(app, pay(MAX))
    assert failed.status_code == 503 and x402wire.PAYMENT_RESPONSE not in failed.headers
    assert node.charged() == 0
    record = node.ledger.channel(CID)
    assert record is not None and record.pending_request is None
    node.fail_with = None
    assert (await post(app, pay(MAX))).status_code == 200  # the voucher is still good
    assert node.charged() == cost(3, 5)
    invariants(node)


async def test_a_stream_the_client_leaves_is_charged_its_last_running_receipt(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    """The client hangs up after the first running receipt: the final receipt is neither
    sent nor charged; the channel is charged what the last running receipt sent says."""
    node.engine.delay = 0.02
    app = node.app(receipt_every=2)
    body = json.dumps({**BODY, "stream": True, "max_tokens": 40}).encode()
    left = asyncio.Event()
    sent: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))
            if RUNNING_RECEIPT_OBJECT.encode() in message.get("body", b""):
                left.set()

    scope = paid_chat_scope("s-left", pay(100_000, 100_000))
    with caplog.at_level(logging.INFO, logger="agoranet.node.payment_middleware"):
        await asyncio.wait_for(app(scope, body_then_disconnect(body, left), send), 20)
    frames = [json.loads(chunk.removeprefix(b"data: ")) for raw in sent
              for chunk in raw.split(b"\n\n") if chunk.startswith(b"data: {")]
    running = receipts_in(frames, RUNNING_RECEIPT_OBJECT)
    assert running and receipts_in(frames, RECEIPT_OBJECT) == []
    assert node.charged() == running[-1].amount < cost(3, 40)
    assert [r.getMessage() for r in caplog.records if r.name == MIDDLEWARE_LOGGER] == [
        f"s-left ended early: charged {running[-1].amount} for {running[-1].tokens_out} tokens "
        "by its running receipt"]
    invariants(node)


# ------------------------------------------------------------------ exact


async def test_exact_is_settled_before_the_answer_by_default(node: Node) -> None:
    response = await post(node.app(), exact_pay(MAX))
    assert response.status_code == 200
    assert len(node.chain.settled) == 1 and settle_of(response)["transaction"] == "0xtx"
    assert Receipt.from_json(settle_of(response)["extra"]["receipt"]).amount == MAX
    # a settlement that fails before the answer: refused, no inference
    node.chain.settle = SettleResponse(success=False, error_reason="reverted", transaction="",
                                       network=NETWORK)
    refused = await post(node.app(), exact_pay(MAX))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "reverted"
    assert node.engine.calls == 1


async def test_exact_can_be_settled_after_the_answer(node: Node,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    app = node.app(settle_exact_before=False)
    response = await post(app, exact_pay(MAX))
    assert response.status_code == 200 and len(node.chain.settled) == 1
    assert settle_of(response)["transaction"] == ""  # not settled yet when it was sent
    node.chain.settle = SettleResponse(success=False, error_reason="reverted", transaction="",
                                       network=NETWORK)
    with caplog.at_level(logging.WARNING, logger="agoranet.node.payment_middleware"):
        late = await post(app, exact_pay(MAX), **{"x-request-id": "late"})
    assert late.status_code == 200 and len(node.chain.settled) == 2
    assert [r.getMessage() for r in caplog.records if r.name == MIDDLEWARE_LOGGER] == [
        "exact payment for late failed after the answer"]
    # a voucher through the same node is never settled like an exact payment
    voucher = await post(app, pay(MAX))
    assert voucher.status_code == 200 and len(node.chain.settled) == 2


async def test_an_exact_stream_ends_with_its_receipt(node: Node) -> None:
    """No running receipts for exact (a fixed amount, paid), however often they are due."""
    frames = await stream(node.app(receipt_every=2), exact_pay(MAX), "x1")
    (receipt,) = receipts_in(frames, RECEIPT_OBJECT)
    assert (receipt.request_id, receipt.amount) == ("x1", MAX)
    assert frames[-1] == "[DONE]" and receipts_in(frames, RUNNING_RECEIPT_OBJECT) == []


async def raw_call(app: Any, body: dict[str, Any], *headers: tuple[bytes, bytes],
                   **scope: Any) -> list[Message]:
    """One request straight through the ASGI interface: every message the app sends."""
    sent: list[Message] = []
    request = json.dumps(body).encode()
    done = False

    async def receive() -> Message:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": request, "more_body": False}
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    # no "scheme": ASGI's default, http
    full = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
            "query_string": b"", "root_path": "", "http_version": "1.1",
            "server": ("node", 80), "client": ("127.0.0.1", 5),
            "headers": [(b"content-type", b"application/json"), *headers], **scope}
    await asyncio.wait_for(app(full, receive, send), 20)
    return sent


async def test_the_middlewares_own_answers_follow_asgi(node: Node) -> None:
    """Its own 4xx answers carry lowercase header names (the ASGI rule) and the right length;
    with no Host header the 402 names localhost."""
    app = node.app()
    for body, status in (({**BODY, "model": "busy"}, 429), ({**BODY, "messages": 1}, 400),
                         (BODY, 402)):
        start, content = await raw_call(app, body)
        assert start["status"] == status
        names = [name for name, _ in start["headers"]]
        assert all(name == name.lower() for name in names), names
        headers = dict(start["headers"])
        assert headers[b"content-type"] == b"application/json"
        assert headers[b"content-length"] == str(len(content["body"])).encode()
        if status == 429:
            assert headers[b"retry-after"] == b"7"
        if status == 402:
            x402 = json.loads(content["body"])["x402"]
            assert x402["resource"]["url"] == "http://localhost/v1/chat/completions"
            assert x402wire.decode_json(headers[b"payment-required"].decode(), "x") == x402
    start, content = await raw_call(app, BODY, (x402wire.PAYMENT_SIGNATURE.encode(),
                                                pay(MAX).encode()))
    assert start["status"] == 200
    assert all(name == name.lower() for name, _ in start["headers"])
    assert b"payment-response" in dict(start["headers"])
    _, content = await raw_call(app, BODY, (b"host", b"node.example"), scheme="https")
    assert json.loads(content["body"])["x402"]["resource"]["url"] == \
        "https://node.example/v1/chat/completions"
