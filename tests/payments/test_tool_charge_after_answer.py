"""A paid tool call's voucher is charged once its answer has gone out, exactly the
receipt the answer carried; an ``exact`` payment, or a ledger written off the event loop,
is charged before the answer as before; a charge the ledger fails to write after the
answer frees the channel.

Through the node's real :class:`PaymentAcceptor` on a fake chain with a real SQLite
ledger and real receipt signatures (acceptor_support), in process: the tool service
asked to leave the charge to its caller (``charge_after``), the HTTP route over ASGI (the
charge as the response's background, after its body), and ``/mcp`` with the official
client over a real HTTP server (the charge right after the part carrying the result).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from agoranet.chain.executor import ChainExecutor
from agoranet.errors import LedgerError
from agoranet.payments import x402wire
from agoranet.payments.accept.ledger_writer import LedgerWriter
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.tools import ToolServer
from agoranet.tools.http_routes import tool_routes
from agoranet.tools.mcp_endpoint import (
    _AFTER_KEY,
    PAYMENT_META,
    PAYMENT_RESPONSE_META,
    McpToolEndpoint,
    _AfterResponse,
    _charge_after_response,
)
from agoranet.tools.mcp_endpoint import PATH as MCP_PATH
from agoranet.tools.payments import ToolPayments
from agoranet.tools.request_ids import REQUEST_ID_META
from agoranet.tools.service import Answer, ToolService
from helpers import served

from . import acceptor_support as real

pytestmark = pytest.mark.timeout(30)

PRICE = 5000


CHAIN = real.Chain()  # its settlers record what went on chain (the exact transfers)


@pytest.fixture
def kit() -> Iterator[tuple[ToolService, SqliteLedger]]:
    executor = ChainExecutor(workers=1, timeout=1.0)
    ledger = SqliteLedger(":memory:")
    CHAIN.settled.clear()
    payments = ToolPayments(real.acceptor(CHAIN, ledger, executor))
    server = ToolServer("later")

    @server.tool(price=PRICE)
    def echo(text: str) -> str:
        return text

    yield ToolService(server, payments), ledger
    payments.acceptor.writer.close()
    ledger.close()
    executor.close()


def _books(ledger: SqliteLedger) -> tuple[int, str | None, list[Receipt]]:
    record = ledger.channel(real.CID)
    assert record is not None
    assert record.charged <= record.voucher_amount
    assert record.charged == sum(r.amount for r in ledger.receipts(real.CID))
    return record.charged, record.pending_request, ledger.receipts(real.CID)


def _receipt(answer: Answer) -> Receipt:
    assert answer.payment_response is not None
    receipt = Receipt.from_json(answer.payment_response["extra"]["receipt"])
    verify_receipt(receipt, real.NODE.address)
    return receipt


async def test_the_answer_carries_the_receipt_the_charge_writes_later(
        kit: tuple[ToolService, SqliteLedger]) -> None:
    service, ledger = kit
    answer = await service.call("echo", {"text": "x"}, real.pay(PRICE, PRICE),
                                "mcp://tool/echo", "later-1", charge_after=True)
    assert isinstance(answer, Answer) and answer.charge is not None
    receipt = _receipt(answer)
    assert (receipt.request_id, receipt.amount, receipt.cumulative) == ("later-1", PRICE, PRICE)
    assert _books(ledger) == (0, "later-1", [])  # held, not charged yet
    await answer.charge()
    assert _books(ledger) == (PRICE, None, [receipt])  # exactly the receipt sent
    # the call's request id is free again: the next call under it is a new one
    again = await service.call("echo", {"text": "y"}, real.pay(2 * PRICE, PRICE),
                               "mcp://tool/echo", "later-2", charge_after=True)
    assert isinstance(again, Answer) and again.charge is not None
    await again.charge()
    assert _books(ledger)[:2] == (2 * PRICE, None)


async def test_without_charge_after_or_on_a_ledger_off_the_loop_it_is_charged_at_once(
        kit: tuple[ToolService, SqliteLedger]) -> None:
    service, ledger = kit
    answer = await service.call("echo", {"text": "x"}, real.pay(PRICE, PRICE),
                                "mcp://tool/echo", "now-1")  # MCP's way: charged at once
    assert isinstance(answer, Answer) and answer.charge is None
    assert _books(ledger) == (PRICE, None, [_receipt(answer)])
    assert service.payments is not None
    acceptor = service.payments.acceptor
    acceptor.writer.close()
    acceptor.writer = LedgerWriter(ledger, inline=False)
    answer = await service.call("echo", {"text": "x"}, real.pay(2 * PRICE, PRICE),
                                "mcp://tool/echo", "now-2", charge_after=True)
    assert isinstance(answer, Answer) and answer.charge is None
    assert _books(ledger)[:2] == (2 * PRICE, None)


async def test_an_exact_payment_is_settled_and_charged_before_the_answer(
        kit: tuple[ToolService, SqliteLedger]) -> None:
    service, _ = kit
    answer = await service.call("echo", {"text": "x"}, real.exact_pay(PRICE),
                                "mcp://tool/echo", "exact-1", charge_after=True)
    assert isinstance(answer, Answer) and answer.charge is None
    assert len(CHAIN.settled) == 1  # on chain before the answer
    assert _receipt(answer).amount == PRICE


async def test_the_http_route_writes_the_charge_after_the_body(
        kit: tuple[ToolService, SqliteLedger]) -> None:
    service, ledger = kit
    app = Starlette(routes=tool_routes(service, None))
    seen: list[tuple[str, tuple[int, str | None, list[Receipt]]]] = []

    async def watched(scope, receive, send):  # type: ignore[no-untyped-def]
        async def watching(message):  # type: ignore[no-untyped-def]
            if message["type"].startswith("http.response"):
                seen.append((message["type"], _books(ledger)))
            await send(message)

        await app(scope, receive, watching)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=watched),
                                 base_url="http://tools") as client:
        response = await client.post("/tools/echo", json={"text": "hi"}, headers={
            x402wire.PAYMENT_SIGNATURE: real.pay(PRICE, PRICE), "x-request-id": "http-1"})
    assert response.status_code == 200 and json.loads(response.text) == {"result": "hi"}
    settle = x402wire.decode_json(response.headers[x402wire.PAYMENT_RESPONSE], "x")
    receipt = Receipt.from_json(settle["extra"]["receipt"])
    assert [kind for kind, _ in seen] == ["http.response.start", "http.response.body"]
    assert all(books == (0, "http-1", []) for _, books in seen)  # held while it was sent
    assert _books(ledger) == (PRICE, None, [receipt])  # then charged that receipt


async def test_a_charge_the_ledger_fails_to_write_frees_the_channel(
        kit: tuple[ToolService, SqliteLedger], caplog: pytest.LogCaptureFixture) -> None:
    """The answer is out with its receipt; the ledger refuses the charge (a full disk, say):
    the hold is released (nothing charged: the seller's loss, said in its log), not left
    holding the channel, and the next call on it is served."""
    service, ledger = kit
    commit = ledger.commit
    left = [1]

    def refuse_once(*args: Any, **kw: Any) -> Receipt:
        if left[0]:
            left[0] -= 1
            raise LedgerError("disk full")
        return commit(*args, **kw)

    ledger.commit = refuse_once  # type: ignore[method-assign]
    answer = await service.call("echo", {"text": "x"}, real.pay(PRICE, PRICE),
                                "mcp://tool/echo", "refused-1", charge_after=True)
    assert isinstance(answer, Answer) and answer.charge is not None
    await answer.charge()
    assert left == [0] and _books(ledger) == (0, None, [])
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "charging tool call refused-1 failed after its answer: disk full; released, nothing "
        "charged"]
    again = await service.call("echo", {"text": "x"}, real.pay(PRICE, PRICE),
                               "mcp://tool/echo", "refused-1", charge_after=True)
    assert isinstance(again, Answer) and again.charge is not None
    await again.charge()
    assert _books(ledger)[:2] == (PRICE, None)


async def test_an_mcp_call_is_charged_once_its_result_has_gone_out(
        kit: tuple[ToolService, SqliteLedger]) -> None:
    """Over MCP (the official client, a real HTTP server in process): the result carries
    the receipt and the channel is still held as it is sent; the charge of exactly that
    receipt is written right after, before the next call on the channel is read."""
    service, ledger = kit
    endpoint = McpToolEndpoint(service)
    bodies: list[tuple[bool, tuple[int, str | None, list[Receipt]] | None]] = []

    class Watched:  # the endpoint, noting the ledger as each part of a response is sent
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def watching(message: Message) -> None:
                if message["type"] == "http.response.body":
                    record = ledger.channel(real.CID)
                    bodies.append((b"receipt" in message.get("body", b""),
                                   None if record is None else _books(ledger)))
                await send(message)

            await endpoint(scope, receive, watching)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with endpoint.running():
            yield

    app = Starlette(routes=[Route(MCP_PATH, Watched(), methods=["GET", "POST", "DELETE"])],
                    lifespan=lifespan)
    async with served(app) as root, httpx2.AsyncClient(timeout=httpx2.Timeout(30.0)) as http, \
            streamable_http_client(f"{root}{MCP_PATH}", http_client=http) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        receipts = []
        for n, request_id in enumerate(("mcp-1", "mcp-2"), start=1):
            payment = x402wire.decode_json(real.pay(n * PRICE, PRICE), "payment")
            result = await session.call_tool("echo", {"text": "hi"}, meta={
                PAYMENT_META: payment, REQUEST_ID_META: request_id})
            assert not result.is_error, result
            settle = (result.meta or {})[PAYMENT_RESPONSE_META]
            receipts.append(Receipt.from_json(settle["extra"]["receipt"]))
    carrying = [books for has_receipt, books in bodies if has_receipt]
    assert carrying == [(0, "mcp-1", []), (PRICE, "mcp-2", receipts[:1])]  # held as sent
    assert _books(ledger) == (2 * PRICE, None, receipts)  # each charged exactly its receipt


async def test_a_call_answered_after_its_response_ended_is_charged_at_once() -> None:
    """A charge left for a response that has already ended (its client went away), or for
    a call not made over HTTP, is written at once, never left pending."""
    written: list[str] = []

    async def write() -> None:
        written.append("charged")

    ended = _AfterResponse()
    await ended.close()
    for request in (SimpleNamespace(scope={_AFTER_KEY: ended}), None):
        await _charge_after_response(SimpleNamespace(request=request),  # type: ignore[arg-type]
                                     write)
    assert written == ["charged", "charged"] and ended.pending == []
    waiting = _AfterResponse()
    await _charge_after_response(SimpleNamespace(  # type: ignore[arg-type]
        request=SimpleNamespace(scope={_AFTER_KEY: waiting})), write)
    assert written == ["charged"] * 2 and len(waiting.pending) == 1
    await waiting.close()  # the response is over, cut short or not: written
    assert written == ["charged"] * 3


async def test_an_http_answer_that_fails_to_go_out_is_still_charged(
        kit: tuple[ToolService, SqliteLedger]) -> None:
    """The server cannot send the answer's body (a connection gone, under a server that says
    so): the tool ran and its receipt was made, so the call is charged all the same, and
    the channel is not left held."""
    service, ledger = kit
    app = Starlette(routes=tool_routes(service, None))
    body = json.dumps({"text": "hi"}).encode()
    scope = {"type": "http", "method": "POST", "path": "/tools/echo", "scheme": "http",
             "query_string": b"", "root_path": "", "http_version": "1.1",
             "server": ("tools", 80), "client": ("127.0.0.1", 5),
             "headers": [(b"host", b"tools"), (b"content-type", b"application/json"),
                         (b"x-request-id", b"lost-1"),
                         (x402wire.PAYMENT_SIGNATURE.lower().encode(),
                          real.pay(PRICE, PRICE).encode())]}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            raise OSError("connection reset")

    with pytest.raises(OSError):
        await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    charged, pending, [receipt] = _books(ledger)
    assert (charged, pending, receipt.request_id) == (PRICE, None, "lost-1")
