"""Paying tools over MCP with ``agoranet.tools.mcp_client.X402McpSession`` and the real
``mcp`` 2.x client, against a real tool server on the dev chain.

x402's own ``x402MCPSession`` is written for ``mcp`` 1.x (a ``timedelta`` timeout that
2.x's call_tool cannot add to its clock, ``isError``/``structuredContent`` where 2.x has
``is_error``/``structured_content``, settle responses never fed back); ours:

- pays ``exact`` (one on-chain transfer of the price) and ``batch-settlement``
  (vouchers on one channel whose cumulative follows each receipt: the settle responses
  are fed back to the x402 client), the buyer's request id named in each receipt; the
  seller's ledger, the receipts and the chain agree (money invariants);
- returns an error that is not a payment request (arguments the schema refuses, a
  tool that raises) as it is: nothing paid, nothing run.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from agoranet.testing.tool_kit import ECHO_PRICE, PER_CHAR
from agoranet.tools.mcp_client import X402McpSession, payment_required_of

from .support import Chain, ToolProcess, sdk_client, token_balance
from .test_paid_tools import invariants_hold, mcp_session, receipt_of, snapshot

pytestmark = pytest.mark.timeout(120)


async def test_exact_and_batch_settlement_over_mcp(chain: Chain, kit: ToolProcess,
                                                   payer: LocalAccount) -> None:
    ran = len(kit.calls())
    start = snapshot(chain, kit, payer)
    before = token_balance(chain, payer.address)
    async with mcp_session(kit.root) as session:
        exact = X402McpSession(session, sdk_client(chain, payer, "exact"))
        call = await exact.call_tool("echo", {"text": "mcp", "times": 2},
                                     request_id="exact-call-1")
        assert not call.is_error and call.paid and call.required is None
        assert call.result.structured_content == {"result": "mcpmcp"}
        assert call.settle is not None and call.settle.transaction.startswith("0x")
        assert call.payment is not None and call.payment.accepted.scheme == "exact"
        receipt = receipt_of(_settle(call.settle), kit.seller.address)
        assert receipt.amount == ECHO_PRICE and receipt.request_id == "exact-call-1"
        assert call.receipt == receipt.to_json()
        assert token_balance(chain, payer.address) == before - ECHO_PRICE

        batch = X402McpSession(session, sdk_client(chain, payer, "batch-settlement"))
        receipts = []
        for i, text in enumerate(("one", "one two", "one two three")):
            call = await batch.call_tool("count", {"text": text}, request_id=f"batch-{i}")
            assert not call.is_error and call.paid, call.result.content
            assert call.result.structured_content == {"words": i + 1,
                                                      "characters": len(text)}
            assert call.settle is not None
            receipts.append(receipt_of(_settle(call.settle), kit.seller.address))
            assert receipts[-1].request_id == f"batch-{i}"
    prices = [PER_CHAR * len(t) for t in ("one", "one two", "one two three")]
    assert [r.amount for r in receipts] == prices
    assert [r.cumulative for r in receipts] == [sum(prices[:i + 1]) for i in range(3)]
    invariants_hold(chain, kit, start, receipts)
    assert len(kit.calls()) == ran + 4


async def test_an_error_that_asks_no_payment_is_returned_unpaid(
        chain: Chain, kit: ToolProcess, payer: LocalAccount) -> None:
    ran = len(kit.calls())
    before = token_balance(chain, payer.address)
    async with mcp_session(kit.root) as session:
        ours = X402McpSession(session, sdk_client(chain, payer, "exact"))
        bad = await ours.call_tool("echo", {"text": 5})
        assert bad.is_error and not bad.paid and bad.payment is None
        assert payment_required_of(bad.result) is None
        assert "bad arguments" in bad.result.content[0].text  # type: ignore[union-attr]
        boom = await ours.call_tool("boom", {"reason": "test"})  # paid, raised: released
        assert boom.is_error and boom.paid and boom.settle is None
    assert token_balance(chain, payer.address) == before  # exact: verified, never settled
    assert len(kit.calls()) == ran + 1  # boom ran once; the bad arguments ran nothing


def _settle(settle: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = settle.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped
