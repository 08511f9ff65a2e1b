"""The tool server names a paid call by the buyer's request id, as a node does.

``agoranet tools serve`` as its own process on the dev chain. Over HTTP the buyer's
``x-request-id`` header, over MCP the call's ``_meta["agoranet/request-id"]``, is the
request id of the call's signed receipt (``exact`` and ``batch-settlement``), so a buyer
can tell its receipt from another call's. A request id a receipt cannot carry (too long,
odd characters, not a string) is a 400 (over MCP an error result) before the payment is
looked at: nothing moves, the tool does not run, and the same payment still pays a call.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from x402.http.clients import x402HttpxClient
from x402.schemas import PaymentPayload

from agoranet.payments import x402wire
from agoranet.testing.tool_kit import ECHO_PRICE

from .support import Chain, ToolProcess, sdk_client, token_balance
from .test_paid_tools import (
    PAYMENT_META,
    _required,
    exact_header,
    mcp_session,
    post,
    receipt_of,
    required_of,
    settle_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REQUEST_ID_META = "agoranet/request-id"  # the call's _meta key over MCP
MAX_REQUEST_ID = 200


@pytest.mark.parametrize("scheme", ["exact", "batch-settlement"])
async def test_http_receipt_carries_the_buyers_request_id(chain: Chain, kit: ToolProcess,
                                                          payer: LocalAccount,
                                                          scheme: str) -> None:
    async with x402HttpxClient(sdk_client(chain, payer, scheme), timeout=30.0) as http:
        for n in (1, 2):
            request_id = f"buyer:{scheme}.call-{n}"
            status, body, settle = await post(http, kit.root, "echo", {"text": "x"},
                                              {"x-request-id": request_id})
            assert (status, body) == (200, {"result": "x"})
            assert settle is not None
            receipt = receipt_of(settle, kit.seller.address)
            assert (receipt.request_id, receipt.amount) == (request_id, ECHO_PRICE)


@pytest.mark.parametrize("bad", ["a b", "x" * (MAX_REQUEST_ID + 1), "naïve", "id/../x"])
async def test_http_bad_request_id_is_400_and_charges_nothing(chain: Chain, kit: ToolProcess,
                                                              payer: LocalAccount,
                                                              bad: str) -> None:
    async with httpx.AsyncClient(timeout=30.0) as http:
        required = await _required(http, kit.root, "echo", {"text": "x"})
        header = exact_header(payer, required)
        before = (token_balance(chain, payer.address), len(kit.calls()))
        response = await http.post(f"{kit.root}/tools/echo", json={"text": "x"}, headers={
            x402wire.PAYMENT_SIGNATURE: header, "x-request-id": bad.encode()})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and "request id" in error["message"]
        assert x402wire.PAYMENT_RESPONSE not in response.headers
        assert (token_balance(chain, payer.address), len(kit.calls())) == before
        # the payment was not used: it still pays the call, under a good request id
        status, body, settle = await post(http, kit.root, "echo", {"text": "x"}, {
            x402wire.PAYMENT_SIGNATURE: header, "x-request-id": "good-1"})
        assert (status, body) == (200, {"result": "x"}) and settle is not None
        assert receipt_of(settle, kit.seller.address).request_id == "good-1"
    assert token_balance(chain, payer.address) == before[0] - ECHO_PRICE


async def test_mcp_receipt_carries_the_request_id_in_meta(chain: Chain, kit: ToolProcess,
                                                          payer: LocalAccount) -> None:
    async with mcp_session(kit.root) as session:
        required = required_of(await session.call_tool("echo", {"text": "m"}))
        payment = PaymentPayload.model_validate(
            x402wire.decode_json(exact_header(payer, required), "PAYMENT-SIGNATURE"))
        meta: dict[str, Any] = {
            PAYMENT_META: payment.model_dump(by_alias=True, exclude_none=True, mode="json")}
        before = (token_balance(chain, payer.address), len(kit.calls()))
        for bad in ("a b", 7):
            result = await session.call_tool("echo", {"text": "m"},
                                             meta={**meta, REQUEST_ID_META: bad})
            assert result.is_error and not (result.meta or {})
            assert (token_balance(chain, payer.address), len(kit.calls())) == before
        result = await session.call_tool("echo", {"text": "m"},
                                         meta={**meta, REQUEST_ID_META: "mcp-call-1"})
        receipt = receipt_of(settle_of(result), kit.seller.address)
        assert (receipt.request_id, receipt.amount) == ("mcp-call-1", ECHO_PRICE)
    assert token_balance(chain, payer.address) == before[0] - ECHO_PRICE
