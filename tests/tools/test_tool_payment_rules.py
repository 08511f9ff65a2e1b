"""The rules of paying one tool call, in process (a recording acceptor, no chain).

What a real chain shows end to end is in test_paid_tools.py; here each rule on its own:
a payment is checked against the tool and its price before the acceptor sees it, an
``exact`` payment is used by one call at a time, the tool runs only once the payment is
accepted, an answer is charged the price (one call in ``tokensIn``) and a failure is
released, never charged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from x402.schemas import PaymentPayload, PaymentRequired, SettleResponse

from agoranet.errors import InvalidRequestError, PaymentRequiredError, ToolFailedError
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import Authorization, PaymentTerms
from agoranet.tools import ToolServer
from agoranet.tools.payments import ToolPayments
from agoranet.tools.service import Answer, ToolService, Unpaid

TERMS = PaymentTerms(chain_id=31337, asset="0x" + "a" * 40, pay_to="0x" + "b" * 40,
                     receiver_authorizer="0x" + "b" * 40, token_name="USD Coin",
                     token_version="2")


@dataclass
class RecordingAcceptor:
    """Accepts every payment it is shown, and records what it was asked."""

    terms: PaymentTerms = TERMS
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    gate: asyncio.Event | None = None  # authorize waits on it, if set
    settle_fails: bool = False

    def payment_required(self, amount: int, prices: Any, *, error: str | None = None,
                         corrective: dict[str, Any] | None = None,
                         resource: str | None = None) -> PaymentRequired:
        accepts = [self.terms.requirement(s, amount) for s in self.terms.schemes]
        return PaymentRequired.model_validate({
            "x402Version": 2, "error": error, "resource": {"url": resource},
            "accepts": [a.model_dump(by_alias=True) for a in accepts]})

    async def authorize(self, header: str | PaymentPayload | None, worst: int,
                        request_id: str) -> Authorization:
        self.calls.append(("authorize", worst))
        if self.gate is not None:
            await self.gate.wait()
        payment = header if isinstance(header, PaymentPayload) else \
            x402wire.decode_payment_payload(header or "")
        amount = int(payment.accepted.amount)
        if amount < worst:
            raise PaymentRequiredError("too little", reason="insufficient_amount")
        return Authorization(payment.accepted.scheme, request_id, "0xpayer", amount,
                             payment.accepted)

    async def settle(self, auth: Authorization) -> SettleResponse | None:
        """As the real acceptor's schemes: exact moves the money now, a voucher later."""
        if auth.scheme != "exact":
            return None
        self.calls.append(("settle", auth.max_amount))
        if self.settle_fails:
            raise PaymentRequiredError("transfer failed", reason="settle_failed")
        return SettleResponse(success=True, transaction="0x1", network=self.terms.network)

    def charge(self, auth: Authorization, tokens_in: int, tokens_out: int, amount: int,
               ) -> tuple[Any, SettleResponse]:
        self.calls.append(("charge", tokens_in, tokens_out, amount))
        auth.done = True
        return None, SettleResponse(success=True, transaction="", network=self.terms.network,
                                    extra={"chargedAmount": str(amount)})

    def release(self, auth: Authorization) -> None:
        self.calls.append(("release", auth.request_id))
        auth.done = True

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def header(scheme: str, amount: int, *, tool: str | None = "echo",
           resource: str | None = None, nonce: str = "0x" + "1" * 64) -> str:
    accepted = TERMS.requirement(scheme, amount, extra={"tool": tool} if tool else None)
    payload = {"authorization": {"from": "0x" + "c" * 40, "nonce": nonce}, "signature": "0x"}
    data: dict[str, Any] = {"x402Version": 2, "payload": payload,
                            "accepted": accepted.model_dump(by_alias=True)}
    if resource is not None:
        data["resource"] = {"url": resource}
    return x402wire.encode_model(PaymentPayload.model_validate(data))


def kit() -> tuple[ToolService, RecordingAcceptor, list[str]]:
    ran: list[str] = []
    server = ToolServer("rules")

    @server.tool(price=100)
    def echo(text: str) -> str:
        ran.append("echo")
        return text

    @server.tool(price=lambda a: 3 * len(a["text"]))
    def count(text: str) -> int:
        ran.append("count")
        return len(text)

    @server.tool(price=50)
    def boom(text: str) -> str:
        ran.append("boom")
        raise RuntimeError("no")

    acceptor = RecordingAcceptor()
    return ToolService(server, ToolPayments(acceptor)), acceptor, ran  # type: ignore[arg-type]


async def test_no_payment_is_a_402_naming_tool_and_price() -> None:
    service, acceptor, ran = kit()
    outcome = await service.call("count", {"text": "abcd"}, None, "http://t/tools/count")
    assert isinstance(outcome, Unpaid) and outcome.error.reason == "payment_required"
    assert "tool count costs 12" in outcome.error.message
    assert {a.amount for a in outcome.required.accepts} == {"12"}
    assert {a.extra["tool"] for a in outcome.required.accepts} == {"count"}
    assert outcome.required.resource is not None
    assert outcome.required.resource.url == "http://t/tools/count"
    assert acceptor.calls == [] and ran == []


@pytest.mark.parametrize(("what", "value", "reason"), [
    ("another tool named", header("exact", 100, tool="count"), "wrong_resource"),
    ("another tool's resource", header("batch-settlement", 100, tool=None,
                                       resource="mcp://tool/count"), "wrong_resource"),
    ("another path", header("exact", 100, tool=None, resource="http://t/v1/chat/completions"),
     "wrong_resource"),
    ("exact for less", header("exact", 99), "insufficient_amount"),
    ("exact for more", header("exact", 101), "invalid_exact_evm_payload_amount"),
    ("not base64", "%%%", "invalid_payload"),
])
async def test_payment_for_something_else_never_reaches_the_acceptor(
        what: str, value: str, reason: str) -> None:
    service, acceptor, ran = kit()
    outcome = await service.call("echo", {"text": "x"}, value, "http://t/tools/echo")
    assert isinstance(outcome, Unpaid), what
    assert outcome.error.reason == reason, (what, outcome.error.message)
    assert outcome.required.error == reason
    assert acceptor.calls == [] and ran == [], what


async def test_matching_resource_and_voucher_above_price_are_accepted() -> None:
    service, acceptor, ran = kit()
    for value in (header("exact", 100, tool=None, resource="mcp://tool/echo"),
                  header("batch-settlement", 250, resource="http://t/tools/echo")):
        outcome = await service.call("echo", {"text": "x"}, value, "mcp://tool/echo")
        assert isinstance(outcome, Answer) and outcome.output == {"result": "x"}
        assert outcome.price == 100 and outcome.payment_response is not None
        assert outcome.payment_response["extra"] == {"chargedAmount": "100"}
    assert ran == ["echo", "echo"]
    # exact: verified, then run, then moved on chain, then the receipt; a voucher: charged
    assert acceptor.calls == [("authorize", 100), ("settle", 100),
                              ("charge", 1, 0, 100), ("authorize", 100), ("charge", 1, 0, 100)]


async def test_bad_arguments_are_refused_before_any_payment() -> None:
    service, acceptor, ran = kit()
    for arguments in ({"text": 5}, {}, {"text": "x", "more": 1}):
        with pytest.raises(InvalidRequestError):
            await service.call("echo", arguments, header("exact", 100), "mcp://tool/echo")
    assert acceptor.calls == [] and ran == []
    assert service.counts.refused == 3


async def test_a_tool_that_raises_is_released_not_charged() -> None:
    service, acceptor, ran = kit()
    with pytest.raises(ToolFailedError, match="RuntimeError: no; nothing was charged"):
        await service.call("boom", {"text": "x"}, header("exact", 50, tool="boom"),
                           "mcp://tool/boom")
    assert ran == ["boom"]
    assert acceptor.names() == ["authorize", "release"]
    assert service.counts.failed == 1 and service.counts.paid == 0


async def test_a_failed_exact_transfer_withholds_the_answer() -> None:
    service, acceptor, ran = kit()
    acceptor.settle_fails = True
    outcome = await service.call("echo", {"text": "x"}, header("exact", 100), "mcp://tool/echo")
    assert isinstance(outcome, Unpaid) and outcome.error.reason == "settle_failed"
    assert acceptor.names() == ["authorize", "settle", "release"]
    assert ran == ["echo"]  # it ran, but its answer is not given unpaid
    # the payment is free again (the chain decides whether its nonce was used)
    acceptor.settle_fails = False
    assert isinstance(await service.call("echo", {"text": "x"}, header("exact", 100),
                                         "mcp://tool/echo"), Answer)


async def test_one_exact_payment_pays_one_call_at_a_time() -> None:
    service, acceptor, ran = kit()
    acceptor.gate = asyncio.Event()
    value = header("exact", 100)
    first = asyncio.create_task(service.call("echo", {"text": "x"}, value, "mcp://tool/echo"))
    while not acceptor.calls:
        await asyncio.sleep(0)
    second = await service.call("echo", {"text": "x"}, value, "mcp://tool/echo")
    assert isinstance(second, Unpaid) and second.error.reason == "payment_already_used"
    other = asyncio.create_task(service.call(  # another nonce is another payment
        "echo", {"text": "y"}, header("exact", 100, nonce="0x" + "2" * 64), "mcp://tool/echo"))
    while len(acceptor.calls) < 2:
        await asyncio.sleep(0)
    acceptor.gate.set()
    assert isinstance(await first, Answer) and isinstance(await other, Answer)
    assert ran == ["echo", "echo"]
    assert [c for c in acceptor.calls if c[0] == "authorize"] == [("authorize", 100)] * 2


@pytest.mark.parametrize("scheme", ["exact", "batch-settlement"])
async def test_a_request_id_names_one_running_call(scheme: str) -> None:
    """The buyer's request id names the receipt: a second call under the id of a running
    one is a 400, before its payment is shown to the acceptor; once it ended, it is free."""
    service, acceptor, ran = kit()
    acceptor.gate = asyncio.Event()
    first = asyncio.create_task(service.call("echo", {"text": "x"}, header(scheme, 100),
                                             "mcp://tool/echo", "buyer-1"))
    while not acceptor.calls:
        await asyncio.sleep(0)
    with pytest.raises(InvalidRequestError, match="running"):  # (not let in to wait)
        await asyncio.wait_for(service.call(
            "echo", {"text": "y"}, header(scheme, 100, nonce="0x" + "3" * 64),
            "mcp://tool/echo", "buyer-1"), timeout=10)
    assert acceptor.names() == ["authorize"]
    acceptor.gate.set()
    assert isinstance(await first, Answer)
    again = await service.call("echo", {"text": "z"}, header(scheme, 100, nonce="0x" + "4" * 64),
                               "mcp://tool/echo", "buyer-1")
    assert isinstance(again, Answer) and ran == ["echo", "echo"]

async def test_free_tool_and_free_server_take_no_payment() -> None:
    server = ToolServer("free")

    @server.tool(price=0)
    def ping() -> str:
        return "pong"

    acceptor = RecordingAcceptor()
    service = ToolService(server, ToolPayments(acceptor))  # type: ignore[arg-type]
    outcome = await service.call("ping", {}, None, "mcp://tool/ping")
    assert isinstance(outcome, Answer) and outcome.payment_response is None
    assert acceptor.calls == []
    unpaid = ToolService(kit()[0].server, None)
    assert isinstance(await unpaid.call("echo", {"text": "x"}, None, "x"), Answer)
