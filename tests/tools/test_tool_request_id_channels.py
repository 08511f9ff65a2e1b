"""Two buyers of a paid tool (``agoranet tools serve`` as its own process, dev chain) that
chose the same request id, each paying on its own batch-settlement channel: the second is
answered 409 ``request_id_in_use`` (choose another id), the tool does not run for it, nothing
of the first buyer's call (its receipt, its channel) is in the answer, and the second buyer's
channel is free at once for its next call. The seller shares the node's ledgers, so this is
the ledger's rule (tests/payments/test_ledger_request_id_channels.py) seen over HTTP.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.http.clients import x402HttpxClient

from agoranet.payments import x402wire
from agoranet.payments.wallet import fund_dev
from agoranet.testing.tool_kit import ECHO_PRICE

from .support import Chain, ToolProcess, ledger_charged, sdk_client
from .test_paid_tools import post, receipt_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_a_request_id_another_buyer_used_is_refused_for_what_it_is(
        chain: Chain, kit: ToolProcess, payer: LocalAccount) -> None:
    other: LocalAccount = Account.create()
    fund_dev(chain.w3, chain.addresses, other.address, stablecoin=100_000_000, native=10**18)
    async with x402HttpxClient(sdk_client(chain, payer, "batch-settlement"),
                               timeout=30.0) as first, \
            x402HttpxClient(sdk_client(chain, other, "batch-settlement"),
                            timeout=30.0) as second:
        status, body, settle = await post(first, kit.root, "echo", {"text": "mine"},
                                          {"x-request-id": "shared-call"})
        assert (status, body) == (200, {"result": "mine"}) and settle is not None
        mine = receipt_of(settle, kit.seller.address)
        calls = len(kit.calls())
        refused = await second.post(f"{kit.root}/tools/echo", json={"text": "theirs"},
                                    headers={"x-request-id": "shared-call"})
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert error["code"] == "request_id_in_use"
        assert "choose another request id" in error["message"]
        assert x402wire.PAYMENT_RESPONSE not in refused.headers
        assert mine.channel_id not in refused.text.lower() and mine.signature not in refused.text
        assert len(kit.calls()) == calls  # the tool did not run
        # another id, and the second buyer's channel serves it at once
        status, body, settle = await post(second, kit.root, "echo", {"text": "theirs"},
                                          {"x-request-id": "their-own-call"})
        assert (status, body) == (200, {"result": "theirs"}) and settle is not None
        theirs = receipt_of(settle, kit.seller.address)
    assert theirs.channel_id != mine.channel_id
    assert (mine.request_id, theirs.request_id) == ("shared-call", "their-own-call")
    # the seller's books: each channel charged exactly its own buyer's receipt
    assert ledger_charged(kit.ledger, mine.channel_id) == mine.cumulative == ECHO_PRICE
    assert ledger_charged(kit.ledger, theirs.channel_id) == theirs.cumulative == ECHO_PRICE
