"""The node's payment middleware under an app that speaks bare ASGI, in process: what the
app below it may leave out or do late does not change what is charged or sent.

- A response start without a ``headers`` list (ASGI's default: none) still carries the
  paid answer's ``PAYMENT-RESPONSE``, and the answer is charged its usage.
- A final receipt frame the app writes after the client hung up (the disconnect read
  first) is neither sent nor charged: the request costs its last running receipt, here
  none, so nothing.
- A plain answer's receipt goes out in its headers and is charged once its body has
  been handed over (on a ledger written on the event loop); one whose body never goes
  out is not charged; a charge the ledger fails to write leaves the channel free.

The app below the middleware plays generation: it records the usage in the request's
metering (as the node's service does) and asks the metering for the final receipt frame.
The acceptor runs on a fake chain with a real SQLite ledger and real receipt signatures
(acceptor_support); the node's own routes behind the middleware are in
test_payment_middleware_rules.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from agoranet.chain.executor import ChainExecutor
from agoranet.engines.base import Finish
from agoranet.errors import LedgerError
from agoranet.market import TokenPrices
from agoranet.node.embeddings import EmbeddingService
from agoranet.node.metering import METERED_SCOPE_KEY, MeteredRequest
from agoranet.node.payment_middleware import RECEIPT_OBJECT, PaymentMiddleware
from agoranet.node.service import InferenceService
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import PaymentAcceptor
from agoranet.payments.accept.ledger_writer import LedgerWriter
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import Receipt, verify_receipt

from .acceptor_support import CID, MAX, NODE, Chain, acceptor, pay
from .paid_support import BODY, CountingEngine, body_then_disconnect, paid_chat_scope

pytestmark = pytest.mark.timeout(30)

PRICES = TokenPrices(1_000_000_000, 2_000_000_000)  # 1000 per prompt token, 2000 per output
USAGE = Finish("stop", 3, 4)
COST = 1000 * 3 + 2000 * 4
Below = Callable[[MeteredRequest, Receive, Send], Awaitable[None]]


class Paying:
    """A middleware on the fake chain over ``below``, the app that plays generation."""

    def __init__(self, ledger: SqliteLedger, paying: PaymentAcceptor,
                 engine: CountingEngine) -> None:
        self.ledger, self.acceptor, self.engine = ledger, paying, engine

    def app(self, below: Below, **kw: Any) -> PaymentMiddleware:
        async def inner(scope: Scope, receive: Receive, send: Send) -> None:
            await below(scope[METERED_SCOPE_KEY], receive, send)

        kw.setdefault("prices", lambda model: PRICES)
        return PaymentMiddleware(inner, acceptor=self.acceptor,
                                 service=InferenceService(self.engine), receipt_every=0, **kw)

    def charged(self) -> int:
        record = self.ledger.channel(CID)
        return 0 if record is None else record.charged

    def invariants(self) -> None:
        record = self.ledger.channel(CID)
        assert record is not None
        assert record.charged == sum(r.amount for r in self.ledger.receipts(CID))
        assert record.charged <= record.voucher_amount
        assert record.pending_request is None


@pytest.fixture
async def node() -> AsyncIterator[Paying]:
    executor = ChainExecutor(workers=1, timeout=1.0)
    ledger = SqliteLedger(":memory:")
    engine = CountingEngine(delay=0.0, max_active=4, max_queue=16)
    paying = acceptor(Chain(), ledger, executor)
    yield Paying(ledger, paying, engine)
    await engine.aclose()
    paying.writer.close()
    ledger.close()
    executor.close()


async def call(app: PaymentMiddleware, request_id: str, *, stream: bool = False,
               hung_up: asyncio.Event | None = None) -> list[Message]:
    """One paid request through the ASGI interface: every message the middleware sends.
    After the body, ``receive`` answers a disconnect once ``hung_up`` is set."""
    body = json.dumps({**BODY, "stream": stream}).encode()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(paid_chat_scope(request_id, pay(MAX)),
                               body_then_disconnect(body, hung_up or asyncio.Event()), send), 20)
    return sent


async def test_a_response_start_without_headers_still_carries_the_receipt(
        node: Paying) -> None:
    async def below(metered: MeteredRequest, receive: Receive, send: Send) -> None:
        metered.metering.usage = USAGE
        await send({"type": "http.response.start", "status": 200})  # no headers: ASGI's default
        await send({"type": "http.response.body", "body": b"{}"})

    start, body = await call(node.app(below), "plain-1")
    assert start["status"] == 200 and body["body"] == b"{}"
    [(name, value)] = start["headers"]
    assert name == x402wire.PAYMENT_RESPONSE.lower().encode()
    settle: dict[str, Any] = x402wire.decode_json(value.decode(), "x")
    receipt = Receipt.from_json(settle["extra"]["receipt"])
    verify_receipt(receipt, NODE.address)
    assert (receipt.request_id, receipt.tokens_in, receipt.tokens_out, receipt.amount) == \
        ("plain-1", 3, 4, COST)
    assert node.charged() == COST
    node.invariants()


async def test_a_final_receipt_written_after_the_client_hung_up_is_not_sent_nor_charged(
        node: Paying) -> None:
    hung_up = asyncio.Event()
    frames: list[bytes] = []

    async def below(metered: MeteredRequest, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        metered.metering.usage = USAGE
        assert metered.metering.stream_finish is not None
        frames.extend(await metered.metering.stream_finish(USAGE))  # the final receipt
        hung_up.set()
        assert (await receive())["type"] == "http.request"  # the body, replayed
        assert (await receive())["type"] == "http.disconnect"  # read before it is sent
        for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent = await call(node.app(below), "gone-1", stream=True, hung_up=hung_up)
    [frame] = frames
    assert RECEIPT_OBJECT.encode() in frame
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert bodies == [b"data: {}\n\n", b""]  # the receipt frame never went out
    assert node.charged() == 0  # no running receipt was sent: nothing is owed
    assert node.ledger.receipts(CID) == []
    node.invariants()

    # the same frame written while the client is still there: sent, and charged; a stream
    # whose usage is known before its response starts is still charged by its final frame
    async def stays(metered: MeteredRequest, receive: Receive, send: Send) -> None:
        metered.metering.usage = USAGE
        await send({"type": "http.response.start", "status": 200, "headers": []})
        assert metered.metering.stream_finish is not None
        for frame in await metered.metering.stream_finish(USAGE):
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent = await call(node.app(stays), "stay-1", stream=True)
    assert sent[0]["headers"] == []  # a stream's receipt is in its final frame, not a header
    [final] = [m["body"] for m in sent if RECEIPT_OBJECT.encode() in m.get("body", b"")]
    receipt = Receipt.from_json(json.loads(final.removeprefix(b"data: "))["agoranet_receipt"])
    assert (receipt.request_id, receipt.amount) == ("stay-1", COST)
    assert node.charged() == COST and node.ledger.receipts(CID) == [receipt]
    node.invariants()


@pytest.mark.parametrize("inline", [True, False])
async def test_a_plain_answer_is_charged_its_receipt_once_its_body_has_gone_out(
        node: Paying, inline: bool) -> None:
    """The receipt goes out in the answer's headers; on a ledger written on the event loop
    (a SQLite file, ``inline``) the charge is written after the body has been handed
    over (off the path to the buyer), exactly that receipt. A ledger written off the loop
    (PostgreSQL) charges before the headers go out: the buyer could otherwise pay its
    next request on the channel while it is still held."""
    node.acceptor.writer.close()
    node.acceptor.writer = LedgerWriter(node.ledger, inline=inline)
    seen: list[tuple[str, int, str | None]] = []  # (message, charged, pending) as sent

    async def below(metered: MeteredRequest, receive: Receive, send: Send) -> None:
        metered.metering.usage = USAGE
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        await send({"type": "http.response.body", "body": b"}"})

    app = node.app(below)

    async def watched(scope: Scope, receive: Receive, send: Send) -> None:
        async def watching(message: Message) -> None:
            record = node.ledger.channel(CID)
            assert record is not None
            seen.append((message["type"], record.charged, record.pending_request))
            await send(message)

        await app(scope, receive, watching)

    sent: list[Message] = []

    async def collect(message: Message) -> None:
        sent.append(message)

    await watched(paid_chat_scope("late-1", pay(MAX)),
                  body_then_disconnect(json.dumps(BODY).encode(), asyncio.Event()), collect)
    if inline:  # held until the body is out
        assert seen == [("http.response.start", 0, "late-1"),
                        ("http.response.body", 0, "late-1"), ("http.response.body", 0, "late-1")]
    else:  # charged as the headers go out
        assert seen == [("http.response.start", COST, None), ("http.response.body", COST, None),
                        ("http.response.body", COST, None)]
    [(_, value)] = sent[0]["headers"]
    receipt = Receipt.from_json(x402wire.decode_json(value.decode(), "x")["extra"]["receipt"])
    assert node.ledger.receipts(CID) == [receipt] and node.charged() == COST
    node.invariants()


async def test_a_plain_answer_whose_body_never_goes_out_is_not_charged(
        node: Paying) -> None:
    async def below(metered: MeteredRequest, receive: Receive, send: Send) -> None:
        metered.metering.usage = USAGE
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("the answer broke after its headers")

    with pytest.raises(RuntimeError):
        await call(node.app(below), "broke-1")
    assert node.charged() == 0 and node.ledger.receipts(CID) == []
    node.invariants()


async def test_a_charge_that_fails_to_be_written_leaves_the_channel_free(
        node: Paying) -> None:
    """The ledger refuses a charge once (a full disk, say): the answer's hold is released
    (nothing charged: the node's loss) rather than left holding the channel until the
    node restarts, and the next request on the channel is served."""
    failing = {"left": 1}
    commit = node.ledger.commit

    def refuse_once(*args: Any, **kw: Any) -> Receipt:
        if failing["left"]:
            failing["left"] -= 1
            raise LedgerError("disk full")
        return commit(*args, **kw)

    node.ledger.commit = refuse_once  # type: ignore[method-assign]

    async def below(metered: MeteredRequest, receive: Receive, send: Send) -> None:
        metered.metering.usage = USAGE
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    with pytest.raises(LedgerError):
        await call(node.app(below), "refused-1")
    assert failing["left"] == 0 and node.charged() == 0
    node.invariants()  # nothing pending: the channel is free
    start, _ = await call(node.app(below), "after-1")
    assert start["status"] == 200 and node.charged() == COST
    node.invariants()


async def test_each_model_is_priced_by_its_own_prices_on_a_node_selling_embeddings(
        node: Paying) -> None:
    """The price book is asked for the request's model; a node that also sells embeddings
    prices a chat request as chat (its prompt and its max_tokens)."""
    books = {"fake": TokenPrices(3_000_000_000, 5_000_000_000)}
    app = node.app(_never_runs, prices=lambda model: books[model],
                   embeddings=EmbeddingService(node.engine))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://node") as client:
        response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 402, response.text
    accepted = response.json()["x402"]["accepts"][0]
    assert accepted["amount"] == str(3_000 * 3 + 5_000 * 5)  # 3 prompt tokens, max_tokens 5
    assert accepted["extra"]["prices"] == {"inputPerMillion": "3000000000",
                                           "outputPerMillion": "5000000000"}
    assert node.engine.calls == 0


async def _never_runs(metered: MeteredRequest, receive: Receive, send: Send) -> None:
    raise AssertionError("an unpaid request reached the app")
