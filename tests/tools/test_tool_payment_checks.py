"""What a paid tool call's payment is checked against, and what its refusals and 402 say.

In process, with a recording acceptor (test_tool_payment_rules.py); a stale voucher's
corrective 402 through the node's real acceptor is in
tests/payments/test_tool_payment_corrective.py. A resource
names a tool only under ``/tools/`` (or as ``mcp://tool/``); an ``exact`` authorization is
one payer's (two payers may pick the same nonce); a refused payment frees its request id;
a refusal names the tool, the price and what was wrong (attacker text cut short); the 402
describes the tool; the payment response is the settle response's JSON.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from x402.schemas import PaymentPayload

from agoranet.errors import InvalidRequestError
from agoranet.payments import x402wire
from agoranet.tools import ToolServer
from agoranet.tools.payments import ToolPayments, resource_tool
from agoranet.tools.service import Answer, ToolService, Unpaid

from .test_tool_payment_rules import TERMS, RecordingAcceptor, header, kit

pytestmark = pytest.mark.timeout(30)

PAYER_A = "0x" + "c" * 40
PAYER_B = "0x" + "d" * 40
NONCE = "0x" + "5" * 64


def exact_from(payer: str, nonce: str = NONCE, amount: int = 100) -> str:
    accepted = TERMS.requirement("exact", amount, extra={"tool": "echo"})
    return x402wire.encode_model(PaymentPayload.model_validate({
        "x402Version": 2, "accepted": accepted.model_dump(by_alias=True),
        "payload": {"authorization": {"from": payer, "nonce": nonce}, "signature": "0x"}}))


def test_a_resource_names_a_tool_only_under_tools() -> None:
    assert resource_tool("mcp://tool/echo") == "echo"
    assert resource_tool("http://t/tools/echo") == "echo"
    assert resource_tool("http://t/agent/tools/my%20tool") == "my tool"
    assert resource_tool("http://t/v1/echo") is None
    assert resource_tool("http://t/tools/") is None
    assert resource_tool("http://t/echo") is None


async def test_a_payment_for_a_path_outside_tools_is_refused_and_says_so() -> None:
    service, acceptor, ran = kit()
    outcome = await service.call("echo", {"text": "x"},
                                 header("exact", 100, tool=None, resource="http://t/v1/echo"),
                                 "http://t/tools/echo")
    assert isinstance(outcome, Unpaid) and outcome.error.reason == "wrong_resource"
    assert outcome.error.message == "this payment is for http://t/v1/echo, not tool 'echo'"
    assert acceptor.calls == [] and ran == []


async def test_refusals_name_the_tool_and_the_price_and_cut_attacker_text() -> None:
    service, _, _ = kit()

    async def refused(value: str) -> str:
        outcome = await service.call("echo", {"text": "x"}, value, "mcp://tool/echo")
        assert isinstance(outcome, Unpaid)
        return outcome.error.message

    unpaid = await service.call("count", {"text": "abcd"}, None, "mcp://tool/count")
    assert isinstance(unpaid, Unpaid)
    assert unpaid.error.message == (
        "tool count costs 12 base units for this call: pay with x402 (PAYMENT-SIGNATURE "
        "header over HTTP, _meta['x402/payment'] over MCP)")
    assert await refused(header("exact", 100, tool="count")) == \
        "this payment is for tool 'count', not 'echo'"
    assert await refused(header("exact", 101)) == \
        "an exact payment for echo must be of exactly 100 base units, not 101"
    long_tool = "t" * 150
    assert await refused(header("exact", 100, tool=long_tool)) == \
        f"this payment is for tool {'t' * 100!r}, not 'echo'"
    long_url = "http://t/" + "u" * 300
    assert await refused(header("exact", 100, tool=None, resource=long_url)) == \
        f"this payment is for {long_url[:200]}, not tool 'echo'"
    assert await refused(header("exact", int("9" * 100))) == \
        f"an exact payment for echo must be of exactly 100 base units, not {'9' * 80}"


async def test_one_payment_at_a_time_and_one_call_per_request_id_say_why() -> None:
    service, acceptor, _ = kit()
    acceptor.gate = asyncio.Event()
    first = asyncio.create_task(service.call("echo", {"text": "x"}, exact_from(PAYER_A),
                                             "mcp://tool/echo", "buyer-1"))
    while not acceptor.calls:
        await asyncio.sleep(0)
    again = await service.call("echo", {"text": "x"}, exact_from(PAYER_A), "mcp://tool/echo")
    assert isinstance(again, Unpaid) and again.error.reason == "payment_already_used"
    assert again.error.message == ("this exact payment is being used by another call right "
                                   "now: a payment pays one call")
    with pytest.raises(InvalidRequestError) as running:
        await service.call("echo", {"text": "y"}, header("batch-settlement", 100),
                           "mcp://tool/echo", "buyer-1")
    assert running.value.param == "request_id"
    assert running.value.message == ("request id buyer-1 names a call that is running: one "
                                     "request id names one call")
    acceptor.gate.set()
    assert isinstance(await first, Answer)


async def test_two_payers_may_use_the_same_nonce_at_once() -> None:
    """An exact authorization is its payer's: the same nonce from another payer is another
    payment (and the same payer's address in capitals is the same payment)."""
    service, acceptor, ran = kit()
    acceptor.gate = asyncio.Event()
    first = asyncio.create_task(service.call("echo", {"text": "a"}, exact_from(PAYER_A),
                                             "mcp://tool/echo"))
    while not acceptor.calls:
        await asyncio.sleep(0)
    same = await service.call("echo", {"text": "x"}, exact_from(PAYER_A.upper()),
                              "mcp://tool/echo")
    assert isinstance(same, Unpaid) and same.error.reason == "payment_already_used"
    other = asyncio.create_task(service.call("echo", {"text": "b"}, exact_from(PAYER_B),
                                             "mcp://tool/echo"))
    while len(acceptor.calls) < 2:
        await asyncio.sleep(0)
    acceptor.gate.set()
    assert isinstance(await first, Answer) and isinstance(await other, Answer)
    assert sorted(ran) == ["echo", "echo"]
    assert acceptor.names().count("charge") == 2


@pytest.mark.parametrize("scheme", ["exact", "batch-settlement"])
async def test_a_payment_the_acceptor_refuses_frees_its_request_id(scheme: str) -> None:
    service, acceptor, ran = kit()
    if scheme == "exact":  # the acceptor refuses this payment once (a bad signature, say)
        acceptor.authorize = _refuse_once(acceptor)  # type: ignore[method-assign]
        first = header(scheme, 100)
    else:  # a voucher for less than the price
        first = header(scheme, 99)
    refused = await service.call("echo", {"text": "x"}, first, "mcp://tool/echo", "buyer-2")
    assert isinstance(refused, Unpaid) and refused.error.reason == "insufficient_amount"
    answered = await service.call("echo", {"text": "x"}, header(scheme, 100),
                                  "mcp://tool/echo", "buyer-2")
    assert isinstance(answered, Answer) and ran == ["echo"]


def _refuse_once(acceptor: RecordingAcceptor) -> Any:
    original = acceptor.authorize
    calls = iter([True])

    async def authorize(header: PaymentPayload | None, worst: int, request_id: str) -> Any:
        if next(calls, False):
            return await original(header and _cheaper(header), worst, request_id)
        return await original(header, worst, request_id)

    return authorize


def _cheaper(payment: PaymentPayload) -> PaymentPayload:
    cheaper = payment.accepted.model_copy(update={"amount": "1"})
    return payment.model_copy(update={"accepted": cheaper})


async def test_the_402_describes_the_tool() -> None:
    server = ToolServer("described")

    @server.tool(price=7, description="Says hello. " * 60)
    def hello() -> str:
        return "hello"

    @server.tool(price=7, description="")
    def bare() -> str:
        return "bare"

    service = ToolService(server, ToolPayments(RecordingAcceptor()))  # type: ignore[arg-type]
    for name, description in (("hello", ("Says hello. " * 60)[:500]), ("bare", "Tool: bare")):
        outcome = await service.call(name, {}, None, f"http://t/tools/{name}")
        assert isinstance(outcome, Unpaid)
        info = outcome.required.resource
        assert info is not None and info.url == f"http://t/tools/{name}"
        assert info.description == description and info.mime_type == "application/json"
        wire = outcome.required.model_dump(by_alias=True, exclude_none=True)
        assert wire["resource"] == {"url": f"http://t/tools/{name}",
                                    "description": description,
                                    "mimeType": "application/json"}


async def test_the_payment_response_is_the_settle_responses_json() -> None:
    service, _, _ = kit()
    outcome = await service.call("echo", {"text": "x"}, header("batch-settlement", 100),
                                 "mcp://tool/echo")
    assert isinstance(outcome, Answer)
    assert outcome.payment_response == {"success": True, "transaction": "",
                                        "network": TERMS.network,
                                        "extra": {"chargedAmount": "100"}}
