"""The paid tool server with real processes on the dev chain.

``agoranet tools serve agoranet.testing.tool_kit:tools`` runs as its own process, paid to
a dev account, claiming every charged call (threshold 1). Buyers pay it with the
unmodified x402 SDK client over HTTP (``exact`` and ``batch-settlement``) and with the
official ``mcp`` client over MCP (x402's MCP transport: the payment in
``_meta["x402/payment"]``, the receipt back in ``_meta["x402/payment-response"]``).
The seller's ledger, the buyer's receipts and the chain agree to the base unit; every
refusal leaves the money where it was and the tool not run (the kit logs each call).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from eth_account.signers.local import LocalAccount
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent
from x402 import x402Client
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm.exact.client import ExactEvmScheme as ExactEvmClient
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, SettleResponse
from x402.schemas.hooks import PaymentResponseContext

from agoranet.payments import x402wire
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.registry.signing import offer_signer
from agoranet.registry.tool_offer import ToolOffer, schema_hash
from agoranet.testing.invariants import (
    BuyerBook,
    ChainSnapshot,
    assert_money_invariants,
    chain_snapshot,
)
from agoranet.testing.tool_kit import ECHO_PRICE, PER_CHAR

from .support import (
    Chain,
    ToolProcess,
    ledger_charged,
    ledger_receipts,
    sdk_client,
    token_balance,
    wait_claimed,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PAYMENT_META = "x402/payment"
RESPONSE_META = "x402/payment-response"


def receipt_of(settle: dict[str, Any], seller: str) -> Receipt:
    receipt = Receipt.from_json(settle["extra"]["receipt"])
    verify_receipt(receipt, seller)
    assert receipt.tokens_in == 1 and receipt.tokens_out == 0  # one call
    return receipt


async def post(http: httpx.AsyncClient, root: str, tool: str, arguments: dict[str, Any],
               headers: dict[str, str] | None = None
               ) -> tuple[int, Any, dict[str, Any] | None]:
    response = await http.post(f"{root}/tools/{tool}", json=arguments, headers=headers)
    header = response.headers.get(x402wire.PAYMENT_RESPONSE)
    settle = x402wire.decode_json(header, "PAYMENT-RESPONSE") if header else None
    return response.status_code, response.json(), settle


@asynccontextmanager
async def mcp_session(root: str) -> AsyncIterator[ClientSession]:
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(60.0))
    async with http, streamable_http_client(f"{root}/mcp", http_client=http) as (
            read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def required_of(result: CallToolResult) -> PaymentRequired:
    """x402's MCP transport: an unpaid call is an error result carrying PaymentRequired."""
    assert result.is_error
    assert isinstance(result.content[0], TextContent)
    required = PaymentRequired.model_validate(result.structured_content)
    assert PaymentRequired.model_validate_json(result.content[0].text) == required
    return required


async def pay_over_mcp(session: ClientSession, client: x402Client, tool: str,
                       arguments: dict[str, Any]) -> tuple[CallToolResult, PaymentPayload]:
    """Call, read the requirements, pay with the SDK client, retry with ``_meta``; feed the
    payment response back to the client (as x402's own MCP client does)."""
    required = required_of(await session.call_tool(tool, arguments))
    payload = await client.create_payment_payload(required)
    assert isinstance(payload, PaymentPayload)
    result = await session.call_tool(tool, arguments, meta={
        PAYMENT_META: payload.model_dump(by_alias=True, exclude_none=True, mode="json")})
    if not result.is_error:
        settle = SettleResponse.model_validate((result.meta or {})[RESPONSE_META])
        await client.handle_payment_response(PaymentResponseContext(
            payment_payload=payload, requirements=payload.accepted, settle_response=settle))
    return result, payload


def settle_of(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    meta: dict[str, Any] = (result.meta or {})[RESPONSE_META]
    return meta


def exact_header(payer: LocalAccount, required: PaymentRequired, *,
                 amount: int | None = None) -> str:
    """An EIP-3009 payment for the ``exact`` requirement (for ``amount``, if given)."""
    accept = next(a for a in required.accepts if a.scheme == "exact")
    if amount is not None:
        accept = accept.model_copy(update={"amount": str(amount)})
    inner = ExactEvmClient(EthAccountSigner(payer)).create_payment_payload(accept)
    return x402wire.encode_model(PaymentPayload(payload=inner, accepted=accept,
                                                resource=required.resource))


def test_signed_offer(kit: ToolProcess) -> None:
    """The offer at /.well-known/agoranet: every tool with its schemas and price, how it
    is paid, signed by the key it is paid to."""
    offer = ToolOffer.model_validate(httpx.get(f"{kit.root}/.well-known/agoranet").json())
    assert offer_signer(offer) == kit.seller.address
    assert offer.url == kit.root
    assert offer.payment is not None and offer.payment.pay_to == kit.seller.address
    assert set(offer.payment.schemes) == {"exact", "batch-settlement"}
    listing = {t["name"]: t for t in httpx.get(f"{kit.root}/tools").json()["data"]}
    assert [t.name for t in offer.tools] == list(listing) == ["echo", "count", "boom"]
    for tool in offer.tools:
        assert tool.input_schema == listing[tool.name]["input_schema"]
        assert tool.schema_sha256 == schema_hash(tool.input_schema, tool.output_schema)
    echo, count = offer.tool("echo"), offer.tool("count")
    assert echo is not None and echo.price.amount == ECHO_PRICE
    assert count is not None and count.price.varies
    assert count.price.max_amount == PER_CHAR * 10_000 == listing["count"]["max_price"]


async def test_http_exact(chain: Chain, kit: ToolProcess, payer: LocalAccount) -> None:
    before = (token_balance(chain, payer.address), token_balance(chain, kit.seller.address))
    ran = len(kit.calls())
    async with x402HttpxClient(sdk_client(chain, payer, "exact"), timeout=30.0) as http:
        status, body, settle = await post(http, kit.root, "echo", {"text": "ab", "times": 2})
        assert (status, body) == (200, {"result": "abab"})
        assert settle is not None and settle["transaction"].startswith("0x")
        assert receipt_of(settle, kit.seller.address).amount == ECHO_PRICE
        text = "hello paid world"
        status, body, settle = await post(http, kit.root, "count", {"text": text})
        assert (status, body) == (200, {"words": 3, "characters": len(text)})
        assert settle is not None
        assert receipt_of(settle, kit.seller.address).amount == PER_CHAR * len(text)
    paid = ECHO_PRICE + PER_CHAR * len(text)
    assert token_balance(chain, payer.address) == before[0] - paid
    # (the settlement loop may move other calls' claims to the seller meanwhile)
    assert token_balance(chain, kit.seller.address) >= before[1] + paid
    assert len(kit.calls()) == ran + 2


async def test_http_batch_settlement_ledger_receipts_chain(chain: Chain, kit: ToolProcess,
                                                           payer: LocalAccount) -> None:
    before = snapshot(chain, kit, payer)
    texts = ["a", "two words", "three little words"]
    receipts: list[Receipt] = []
    async with x402HttpxClient(sdk_client(chain, payer, "batch-settlement"),
                               timeout=30.0) as http:
        for text in texts:
            for tool, arguments in (("echo", {"text": text}), ("count", {"text": text})):
                status, _, settle = await post(http, kit.root, tool, arguments)
                assert status == 200 and settle is not None
                receipts.append(receipt_of(settle, kit.seller.address))
    prices = [p for t in texts for p in (ECHO_PRICE, PER_CHAR * len(t))]
    assert [r.amount for r in receipts] == prices
    cid = receipts[0].channel_id
    assert {r.channel_id for r in receipts} == {cid}
    assert [r.cumulative for r in receipts] == [sum(prices[:i + 1]) for i in range(len(prices))]
    assert ledger_charged(kit.ledger, cid) == sum(prices)
    invariants_hold(chain, kit, before, receipts)  # the server claims it on chain


async def test_mcp_client_pays_exact_and_batch(chain: Chain, kit: ToolProcess,
                                               payer: LocalAccount) -> None:
    ran = len(kit.calls())
    before = token_balance(chain, payer.address)
    start = snapshot(chain, kit, payer)
    async with mcp_session(kit.root) as session:
        listed = {t.name: t for t in (await session.list_tools()).tools}
        assert set(listed) == {"echo", "count", "boom"}
        http_listing = httpx.get(f"{kit.root}/tools").json()["data"]
        assert listed["count"].input_schema == next(
            t["input_schema"] for t in http_listing if t["name"] == "count")
        assert listed["count"].output_schema is not None

        exact = sdk_client(chain, payer, "exact")
        result, payload = await pay_over_mcp(session, exact, "echo", {"text": "mcp"})
        assert result.structured_content == {"result": "mcp"}
        assert _text(result) == "mcp"  # a string result is its own text
        settle = settle_of(result)
        assert settle["transaction"].startswith("0x")
        assert receipt_of(settle, kit.seller.address).amount == ECHO_PRICE
        assert payload.accepted.extra["tool"] == "echo"

        batch = sdk_client(chain, payer, "batch-settlement")
        receipts = []
        for text in ("one", "one two"):
            result, _ = await pay_over_mcp(session, batch, "count", {"text": text})
            assert result.structured_content == {"words": len(text.split()),
                                                 "characters": len(text)}
            receipts.append(receipt_of(settle_of(result), kit.seller.address))
    assert [r.amount for r in receipts] == [PER_CHAR * 3, PER_CHAR * 7]
    assert receipts[1].cumulative == PER_CHAR * 10
    invariants_hold(chain, kit, start, receipts)
    assert len(kit.calls()) == ran + 3
    deposit = before - ECHO_PRICE - token_balance(chain, payer.address)
    assert deposit > PER_CHAR * 10  # the rest stays in the payer's channel


async def test_refusals_charge_nothing_and_run_nothing(chain: Chain, kit: ToolProcess,
                                                       payer: LocalAccount) -> None:
    """No payment, arguments that fail the schema, a payment for another tool or for less,
    a replayed payment (exact, deposit and voucher): refused, nothing moved, nothing ran."""
    start = snapshot(chain, kit, payer)
    async with httpx.AsyncClient(timeout=30.0) as http:
        status, body, _ = await post(http, kit.root, "echo", {"text": "x"})
        assert status == 402 and body["error"]["code"] == "payment_required"
        required = await _required(http, kit.root, "echo", {"text": "x"})
        assert {a.scheme for a in required.accepts} == {"exact", "batch-settlement"}
        assert all(a.amount == str(ECHO_PRICE) for a in required.accepts)

        good = exact_header(payer, required)  # one good exact payment, then its replay
        status, body, settle = await post(http, kit.root, "echo", {"text": "x"},
                                          {x402wire.PAYMENT_SIGNATURE: good})
        assert status == 200 and settle is not None
        ran = len(kit.calls())
        balance = token_balance(chain, payer.address)

        fresh = exact_header(payer, required)  # valid and unused: refused for other reasons
        refusals = [
            ("replayed", "echo", {"text": "x"}, good, 402, None),
            ("no payment", "echo", {"text": "x"}, None, 402, "payment_required"),
            ("schema", "echo", {"text": 5}, fresh, 400, None),
            ("unknown argument", "echo", {"text": "x", "loud": True}, fresh, 400, None),
            ("another tool", "boom", {"reason": "x"}, fresh, 402, "wrong_resource"),
            ("smaller amount", "echo", {"text": "x"},
             exact_header(payer, required, amount=ECHO_PRICE - 1), 402, "insufficient_amount"),
        ]
        for what, tool, arguments, header, expected, code in refusals:
            headers = {x402wire.PAYMENT_SIGNATURE: header} if header else None
            status, body, settle = await post(http, kit.root, tool, arguments, headers)
            assert status == expected and settle is None, (what, status, body)
            assert body["error"]["message"], what
            assert code is None or body["error"]["code"] == code, (what, body)
        # a batch-settlement payment (a deposit, on a new channel) for less than the price
        low = required.model_copy(update={"accepts": [
            a.model_copy(update={"amount": str(ECHO_PRICE - 1)}) for a in required.accepts]})
        payload = await sdk_client(chain, payer, "batch-settlement").create_payment_payload(low)
        assert isinstance(payload, PaymentPayload)
        status, body, _ = await post(http, kit.root, "echo", {"text": "x"}, {
            x402wire.PAYMENT_SIGNATURE: x402wire.encode_model(payload)})
        assert status == 402 and body["error"]["code"] == "insufficient_amount", body
        assert len(kit.calls()) == ran
        assert token_balance(chain, payer.address) == balance  # no deposit went on chain

        # batch-settlement: the deposit payment and a later voucher, each sent twice
        client = sdk_client(chain, payer, "batch-settlement")
        receipts = []
        for _ in range(2):
            required = await _required(http, kit.root, "echo", {"text": "v"})
            payload = await client.create_payment_payload(required)
            assert isinstance(payload, PaymentPayload)
            header = {x402wire.PAYMENT_SIGNATURE: x402wire.encode_model(payload)}
            status, _, settle = await post(http, kit.root, "echo", {"text": "v"}, header)
            assert status == 200 and settle is not None
            receipts.append(receipt_of(settle, kit.seller.address))
            await client.handle_payment_response(PaymentResponseContext(
                payment_payload=payload, requirements=payload.accepted,
                settle_response=SettleResponse.model_validate(settle)))
            ran, balance = len(kit.calls()), token_balance(chain, payer.address)
            for tool, arguments in (("echo", {"text": "v"}), ("count", {"text": ""}),
                                    ("boom", {"reason": "v"})):
                status, body, _ = await post(http, kit.root, tool, arguments, header)
                assert status in (400, 402), body
            assert len(kit.calls()) == ran
            assert token_balance(chain, payer.address) == balance
        assert ledger_charged(kit.ledger, receipts[0].channel_id) == 2 * ECHO_PRICE

    # over MCP: no payment, bad arguments, another tool's payment, a replay
    async with mcp_session(kit.root) as session:
        ran = len(kit.calls())
        balance = token_balance(chain, payer.address)
        assert required_of(await session.call_tool("echo", {"text": "m"})).error \
            == "payment_required"
        payment = x402wire.decode_payment_payload(fresh)
        meta = {PAYMENT_META: payment.model_dump(by_alias=True, exclude_none=True, mode="json")}
        bad = await session.call_tool("echo", {"text": 7}, meta=meta)
        assert bad.is_error and "bad arguments for echo" in _text(bad)
        wrong = await session.call_tool("boom", {"reason": "m"}, meta=meta)
        assert required_of(wrong).error == "wrong_resource"
        assert len(kit.calls()) == ran
        assert token_balance(chain, payer.address) == balance
        first = await session.call_tool("echo", {"text": "m"}, meta=meta)
        assert first.structured_content == {"result": "m"}, first.content
        assert receipt_of(settle_of(first), kit.seller.address).amount == ECHO_PRICE
        again = await session.call_tool("echo", {"text": "m"}, meta=meta)
        assert required_of(again).error
        assert len(kit.calls()) == ran + 1  # only the first paid call ran
        assert token_balance(chain, payer.address) == balance - ECHO_PRICE
    invariants_hold(chain, kit, start, receipts)


async def test_exact_replayed_at_once_runs_once(chain: Chain, kit: ToolProcess,
                                                payer: LocalAccount) -> None:
    async with httpx.AsyncClient(timeout=30.0) as http:
        header = exact_header(payer, await _required(http, kit.root, "echo", {"text": "r"}))
        ran = len(kit.calls())
        before = token_balance(chain, payer.address)
        answers = await asyncio.gather(*(post(http, kit.root, "echo", {"text": "r"},
                                              {x402wire.PAYMENT_SIGNATURE: header})
                                         for _ in range(4)))
    assert sorted(a[0] for a in answers) == [200, 402, 402, 402], answers
    assert len(kit.calls()) == ran + 1
    assert token_balance(chain, payer.address) == before - ECHO_PRICE


async def test_raising_tool_is_charged_nothing(chain: Chain, kit: ToolProcess,
                                               payer: LocalAccount) -> None:
    start = snapshot(chain, kit, payer)
    before = token_balance(chain, payer.address)
    ran = len(kit.calls())
    async with x402HttpxClient(sdk_client(chain, payer, "exact"), timeout=30.0) as http:
        status, body, settle = await post(http, kit.root, "boom", {"reason": "on purpose"})
    assert status == 422 and settle is None
    assert body["error"]["code"] == "tool_failed"
    assert "boom: on purpose" in body["error"]["message"]
    assert "nothing was charged" in body["error"]["message"]
    assert token_balance(chain, payer.address) == before  # the exact payment never moved

    async with x402HttpxClient(sdk_client(chain, payer, "batch-settlement"),
                               timeout=30.0) as http:
        status, _, settle = await post(http, kit.root, "echo", {"text": "ok"})
        assert status == 200 and settle is not None
        receipts = [receipt_of(settle, kit.seller.address)]
        cid = receipts[0].channel_id
        status, body, settle = await post(http, kit.root, "boom", {"reason": "again"})
        assert status == 422 and settle is None
        assert ledger_charged(kit.ledger, cid) == ECHO_PRICE
        status, _, settle = await post(http, kit.root, "echo", {"text": "after"})
        assert status == 200 and settle is not None
        receipts.append(receipt_of(settle, kit.seller.address))
        assert receipts[1].cumulative == 2 * ECHO_PRICE
    async with mcp_session(kit.root) as session:
        result, _ = await pay_over_mcp(session, sdk_client(chain, payer, "exact"), "boom",
                                       {"reason": "mcp"})
    assert result.is_error and "nothing was charged" in _text(result)
    assert RESPONSE_META not in (result.meta or {})
    assert len(kit.calls()) == ran + 5  # boom ran three times, echo twice
    assert ledger_charged(kit.ledger, cid) == 2 * ECHO_PRICE
    invariants_hold(chain, kit, start, receipts)


def snapshot(chain: Chain, kit: ToolProcess, payer: LocalAccount) -> ChainSnapshot:
    return chain_snapshot(chain.w3, chain.addresses, [payer.address, kit.seller.address,
                                                      chain.addresses.escrow])


def invariants_hold(chain: Chain, kit: ToolProcess, before: ChainSnapshot,
                    receipts: list[Receipt]) -> None:
    """Once the server has claimed the channel: the money invariants, and the seller's
    ledger, the buyer's receipts and the chain agreeing to the base unit."""
    cid = receipts[0].channel_id
    total = sum(r.amount for r in receipts)
    assert ledger_receipts(kit.ledger, cid) == [r.amount for r in receipts]
    wait_claimed(chain, cid, total)
    book = BuyerBook(cid, tuple(receipts), spent=total, headroom=max(r.amount for r in receipts))
    report = assert_money_invariants(chain.w3, chain.addresses, before=before, books=[book],
                                     ledger=kit.ledger)
    assert report.channels[0].claimed == report.channels[0].charged == total


def _text(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def _required(http: httpx.AsyncClient, root: str, tool: str,
                    arguments: dict[str, Any]) -> PaymentRequired:
    response = await http.post(f"{root}/tools/{tool}", json=arguments)
    assert response.status_code == 402
    return x402wire.decode_payment_required(response.headers[x402wire.PAYMENT_REQUIRED])
