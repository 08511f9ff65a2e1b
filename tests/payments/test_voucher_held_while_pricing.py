"""A paid request's voucher goes to the ledger while the request is tokenised, and a
request that then fails, or turns out to cost more than the voucher authorizes, leaves
nothing held and nothing charged.

The node checks the payment and hands its voucher to the ledger writer before it
tokenises the request, so the voucher's trip to the disk overlaps the tokenising; the
voucher is still durable before any inference. Here, in process, over the real
middleware, a real SQLite ledger and real signatures on a fake chain (acceptor_support):

- the voucher is held while the engine prepares the request (the engine waits to see
  it in the ledger, and would time out if it came only after);
- a request whose preparation fails after its voucher was held answers the engine's
  error and retracts the voucher: no row is left (the channel's, made for it, neither),
  nothing is charged, and the next request pays as if the failed one never came;
- a voucher for less than the request's worst case is retracted and refused with
  ``insufficient_amount``; the engine never runs;
- a client that hangs up while its request is tokenised leaves nothing held;
- a deposit (money moved on chain to accept it) is not taken before the price: a
  request that fails to prepare sends nothing on chain, one that is priced pays with it;
- a retract the ledger fails is logged, the request answered its own error, and the
  hold released by the node's next start.

Money invariants are asserted after each: charged = the sum of the receipts, charged
<= the channel's voucher, nothing pending.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from agoranet.chain.executor import ChainExecutor
from agoranet.engines.base import Finish, GenerationRequest, Prepared
from agoranet.errors import InvalidRequestError, LedgerError
from agoranet.market import TokenPrices
from agoranet.node.metering import METERED_SCOPE_KEY
from agoranet.node.payment_middleware import PaymentMiddleware
from agoranet.node.service import InferenceService
from agoranet.payments.accept.sqlite_ledger import SqliteLedger

from .acceptor_support import CID, MAX, Chain, acceptor, pay
from .paid_support import BODY, WORST, CountingEngine, body_then_disconnect, paid_chat_scope

pytestmark = pytest.mark.timeout(30)

PRICES = TokenPrices(1_000_000_000, 2_000_000_000)  # BODY's worst case: WORST


class WatchingEngine(CountingEngine):
    """Prepares a request only once its voucher is held in ``ledger`` (fails the request
    if that does not happen within ``patience`` seconds; with ``watch`` off it just takes
    that long), then does what the test says: ``fail`` raises the engine's 400, ``stall``
    never returns."""

    def __init__(self, ledger: SqliteLedger, **kw: Any) -> None:
        super().__init__(delay=0.0, max_active=4, max_queue=16, **kw)
        self.ledger = ledger
        self.patience = 5.0
        self.watch = True
        self.saw_held: list[str] = []  # the request ids seen held while preparing
        self.fail = False
        self.stall = False
        self.stalled = asyncio.Event()

    async def prepare(self, request: GenerationRequest) -> Prepared:
        if self.watch:
            await self._see_held()
        else:
            await asyncio.sleep(self.patience)
        if self.fail:
            raise InvalidRequestError("this prompt cannot be tokenised", param="messages")
        if self.stall:
            self.stalled.set()
            await asyncio.Event().wait()
        return await super().prepare(request)


    async def _see_held(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.patience
        while (record := self.ledger.channel(CID)) is None or record.pending_request is None:
            if loop.time() > deadline:
                raise AssertionError("the voucher was not held while the request was prepared")
            await asyncio.sleep(0.001)
        self.saw_held.append(record.pending_request)


class Node:
    def __init__(self) -> None:
        self.executor = ChainExecutor(workers=1, timeout=1.0)
        self.ledger = SqliteLedger(":memory:")
        self.chain = Chain()
        self.engine = WatchingEngine(self.ledger)
        self.acceptor = acceptor(self.chain, self.ledger, self.executor)
        self.served: list[str] = []
        self.usage: Finish | None = None  # what the app below reports it generated

        async def below(scope: Scope, receive: Receive, send: Send) -> None:
            metered = scope[METERED_SCOPE_KEY]
            self.served.append(metered.prepared.request.model)
            metered.metering.usage = self.usage
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        self.app = PaymentMiddleware(below, acceptor=self.acceptor,
                                     service=InferenceService(self.engine),
                                     prices=lambda model: PRICES, receipt_every=0)

    async def call(self, request_id: str, payment: str,
                   gone: asyncio.Event | None = None) -> tuple[int, dict[str, Any]]:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        body = json.dumps(BODY).encode()
        await self.app(paid_chat_scope(request_id, payment),
                       body_then_disconnect(body, gone or asyncio.Event()), send)
        start, answer = sent[0], sent[-1]
        return start["status"], json.loads(answer["body"] or b"{}")

    def invariants(self, *, charged: int, voucher: int) -> None:
        record = self.ledger.channel(CID)
        if record is None:  # every voucher offered on it was retracted: it was never used
            assert charged == voucher == 0 and self.ledger.receipts(CID) == []
            return
        assert record.pending_request is None  # nothing held
        assert record.charged == charged == sum(r.amount for r in self.ledger.receipts(CID))
        assert record.charged <= record.voucher_amount == voucher

    async def close(self) -> None:
        await self.engine.aclose()
        self.acceptor.writer.close()
        self.ledger.close()
        self.executor.close()


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    made = Node()
    yield made
    await made.close()


async def test_the_voucher_is_held_while_the_request_is_tokenised(node: Node) -> None:
    status, _ = await node.call("held-1", pay(MAX))
    assert status == 200
    assert node.engine.saw_held == ["held-1"]
    assert node.served == ["fake"]
    # nothing was charged (the app below reported no usage), the voucher stays the channel's
    node.invariants(charged=0, voucher=0)


async def test_a_request_that_fails_to_prepare_retracts_its_voucher(node: Node) -> None:
    node.engine.fail = True
    status, body = await node.call("fails-1", pay(MAX))
    assert status == 400 and body["error"]["param"] == "messages"
    assert node.engine.saw_held == ["fails-1"]  # it was held, then taken back
    assert node.served == [] and node.engine.calls == 0
    node.invariants(charged=0, voucher=0)
    assert node.ledger.channel(CID) is None  # retracted: no voucher row, nor the channel's

    node.engine.fail = False  # the same voucher pays the next request, as if none came
    status, _ = await node.call("fails-2", pay(MAX))
    assert status == 200 and node.served == ["fake"]


async def test_a_voucher_short_of_the_worst_case_is_retracted_and_refused(node: Node) -> None:
    short = WORST - 1
    status, body = await node.call("short-1", pay(short, max_amount=short))
    assert status == 402
    assert body["error"]["code"] == "insufficient_amount"
    assert body["error"]["message"] == \
        f"payment authorizes {short} base units but this request may cost {WORST}"
    assert body["x402"]["accepts"][0]["amount"] == str(WORST)
    assert node.served == [] and node.engine.calls == 0
    node.invariants(charged=0, voucher=0)
    assert node.ledger.channel(CID) is None

    status, _ = await node.call("short-2", pay(MAX))  # then a sufficient one is served
    assert status == 200 and node.served == ["fake"]


async def test_a_client_gone_while_its_request_is_tokenised_leaves_nothing_held(
        node: Node) -> None:
    node.engine.stall = True
    task = asyncio.ensure_future(node.call("gone-1", pay(MAX)))
    await asyncio.wait_for(node.engine.stalled.wait(), 10)
    task.cancel()  # the server cancels a request whose client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(2000):  # retracted once the cancelled request's hold is known
        if node.ledger.channel(CID) is None:
            break
        await asyncio.sleep(0.005)
    assert node.ledger.channel(CID) is None, "the hold outlived its cancelled request"
    node.invariants(charged=0, voucher=0)
    assert node.served == []


async def test_a_deposit_is_not_taken_before_the_request_is_priced(node: Node) -> None:
    node.engine.fail, node.engine.watch = True, False
    node.engine.patience = 0.3  # time for a deposit taken ahead to reach the chain
    status, body = await node.call("deposit-1", pay(MAX, kind="deposit"))
    assert status == 400 and body["error"]["param"] == "messages"
    assert node.chain.settled == []  # no deposit went on chain for a request not served
    assert node.ledger.channel(CID) is None  # and the ledger never saw the channel


async def test_a_deposit_is_taken_once_the_request_is_priced_and_pays_for_it(
        node: Node) -> None:
    node.engine.watch, node.engine.patience = False, 0.0
    node.usage = Finish("stop", 3, 4)
    status, _ = await node.call("deposit-2", pay(MAX, kind="deposit"))
    assert status == 200 and node.served == ["fake"]
    assert len(node.chain.settled) == 1  # the deposit went on chain, then the voucher held
    [receipt] = node.ledger.receipts(CID)
    assert (receipt.request_id, receipt.amount) == ("deposit-2", 3 * 1000 + 4 * 2000)
    node.invariants(charged=receipt.amount, voucher=MAX)


async def test_a_retract_that_fails_is_logged_and_the_request_answers_its_own_error(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    """The ledger cannot take the hold back (a full disk, say): the buyer still gets its
    request's own error, the node's log says what is left held, and the node's next start
    releases it (recover), nothing charged."""
    node.engine.fail = True

    def refuse(hold: Any) -> None:
        raise LedgerError("disk full")

    node.ledger.retract = refuse  # type: ignore[method-assign]
    status, body = await node.call("fails-3", pay(MAX))
    assert status == 400 and body["error"]["param"] == "messages"
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "retracting the payment held for fails-3 failed: disk full"]
    assert node.ledger.recover() == 1  # what a restart does
    node.invariants(charged=0, voucher=0)
