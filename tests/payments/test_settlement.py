"""When the node claims: amount, request count, age, a pending withdrawal; retries; the loop."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from agoranet.errors import PaymentError
from agoranet.node.settlement_loop import SettlementLoop
from agoranet.payments.receipts import ReceiptSigner
from agoranet.payments.settlement import ClaimPolicy, Settler
from agoranet.payments.sqlite_ledger import SqliteLedger
from agoranet.payments.verifier import OnchainState

SIGNER = ReceiptSigner(bytes(Account.create().key))
ADDR = [Account.create().address for _ in range(4)]
CONFIG = ChannelConfig.from_dict({"payer": ADDR[0], "payerAuthorizer": ADDR[0],
                                  "receiver": ADDR[1], "receiverAuthorizer": ADDR[1],
                                  "token": ADDR[2], "withdrawDelay": 900,
                                  "salt": "0x" + "00" * 32})
CID = "0x" + "11" * 32
REQ = PaymentRequirements(scheme="batch-settlement", network="eip155:31337", asset=ADDR[2],
                          amount="0", pay_to=ADDR[1], max_timeout_seconds=60)


class FakeChain:
    """The facilitator and the escrow's view: records claims and settles, may fail."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.withdrawing = 0
        self.fail = False

    def facilitate(self, payment: PaymentPayload, _: PaymentRequirements) -> SettleResponse:
        if self.fail:
            raise OSError("rpc down")
        self.calls.append(payment.payload)
        return SettleResponse(success=True, transaction=f"0x{len(self.calls):064x}",
                              network="eip155:31337", amount="")

    def state(self, channel_id: str) -> OnchainState:
        return OnchainState(10**9, 0, self.withdrawing, 0, time.monotonic())


def charge(ledger: SqliteLedger, n: int, amount: int) -> None:
    for _ in range(n):
        ch = ledger.channel(CID)
        assert ch is not None
        i = len(ledger.receipts())
        hold = ledger.accept_voucher(f"r{i}", CID, ch.charged + amount, "0x" + "22" * 65, amount)
        ledger.commit(hold, 1, 1, amount, SIGNER.sign, 31337)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[SqliteLedger, FakeChain]:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    ledger.ensure_channel(CID, json.dumps(CONFIG.to_dict()), ADDR[0], 0)
    return ledger, FakeChain()


def settler(ledger: SqliteLedger, chain: FakeChain, **policy: Any) -> Settler:
    return Settler(ledger, chain.facilitate, REQ, chain.state,
                   ClaimPolicy(**{"min_amount": 1000, "max_requests": 10, "max_age": 60.0,
                                  **policy}),
                   settled_of=lambda tx: 0)


def test_thresholds(setup: tuple[SqliteLedger, FakeChain]) -> None:
    ledger, chain = setup
    s = settler(ledger, chain)
    assert s.tick() is None  # nothing charged
    charge(ledger, 3, 100)
    assert s.due(ledger.claim_candidates()) == ""
    assert s.due(ledger.claim_candidates(), now=time.time() + 61) == "age"
    charge(ledger, 7, 10)  # 10 requests
    assert s.due(ledger.claim_candidates()) == "requests"
    assert settler(ledger, chain, max_requests=100).due(ledger.claim_candidates()) == ""
    charge(ledger, 1, 700)  # 370 + 700 >= 1000
    assert settler(ledger, chain, max_requests=100).due(ledger.claim_candidates()) == "amount"
    chain.withdrawing = 12345  # below every threshold, a withdrawal forces the claim
    assert settler(ledger, chain, min_amount=10**9, max_requests=10**6).due(
        ledger.claim_candidates()).startswith("withdrawal pending")


def test_claim_then_settle_and_retry(setup: tuple[SqliteLedger, FakeChain]) -> None:
    ledger, chain = setup
    charge(ledger, 10, 5)
    s = settler(ledger, chain)
    chain.fail = True
    with pytest.raises(PaymentError):
        s.tick()
    assert ledger.claim_candidates()[0].unclaimed == 50  # nothing recorded: retried later
    chain.fail = False
    outcome = s.tick()
    assert outcome is not None and outcome.claimed == {CID: 50} and outcome.reason == "requests"
    claim, settle = chain.calls
    [voucher] = claim["claims"]
    assert voucher["totalClaimed"] == "50" and voucher["voucher"]["maxClaimableAmount"] == "50"
    assert settle["receiver"] == ADDR[1]
    assert ledger.claim_candidates() == [] and s.tick() is None
    [earned] = ledger.earnings()
    assert (earned.charged, earned.claimed) == (50, 50)


async def test_loop_ticks_in_the_background(setup: tuple[SqliteLedger, FakeChain]) -> None:
    ledger, chain = setup
    loop = SettlementLoop(settler(ledger, chain), interval=0.05)
    chain.fail = True  # a failing chain is logged and retried, the loop keeps going
    loop.start()
    try:
        charge(ledger, 10, 5)
        await asyncio.sleep(0.2)
        assert ledger.claim_candidates()
        chain.fail = False
        for _ in range(100):
            if not ledger.claim_candidates():
                break
            await asyncio.sleep(0.05)
        assert ledger.claim_candidates() == [] and len(chain.calls) == 2
        charge(ledger, 3, 5)
        chain.withdrawing = 1  # a withdrawal is claimed against at once
        for _ in range(100):
            if not ledger.claim_candidates():
                break
            await asyncio.sleep(0.05)
        assert ledger.claim_candidates() == [] and len(chain.calls) == 4
    finally:
        await loop.stop()


def test_batches_and_a_bad_channel(tmp_path: Path) -> None:
    """Five channels, two per claim transaction; one channel's claim always reverts."""
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    cids = ["0x" + f"{i:02x}" * 32 for i in range(1, 6)]
    for cid in cids:
        ledger.ensure_channel(cid, json.dumps(CONFIG.to_dict()), ADDR[0], 0)
        hold = ledger.accept_voucher(f"r-{cid}", cid, 40, "0x" + "22" * 65, 40)
        ledger.commit(hold, 1, 1, 30, SIGNER.sign, 31337)
    chain = FakeChain()
    bad = cids[2]
    good = chain.facilitate

    def facilitate(payment: PaymentPayload, req: PaymentRequirements) -> SettleResponse:
        claims = payment.payload.get("claims") or []
        if any(c["voucher"]["maxClaimableAmount"] == "40" and c["signature"] == "0xbad"
               for c in claims):
            return SettleResponse(success=False, error_reason="reverted",
                                  network="eip155:31337", transaction="")
        return good(payment, req)

    with ledger._write() as db:  # the bad channel's stored voucher does not verify on chain
        db.execute("UPDATE channels SET voucher_signature = '0xbad' WHERE channel_id = ?",
                   (bad,))
    s = Settler(ledger, facilitate, REQ, chain.state, ClaimPolicy(max_claims_per_tx=2))
    outcome = s.tick(force=True)
    assert outcome is not None and set(outcome.claimed) == set(cids) - {bad}
    claims = [c for c in chain.calls if "claims" in c]
    # [1,2] in one tx; [3,4] reverts and is split: 4 alone succeeds; then [5]
    assert [len(c["claims"]) for c in claims] == [2, 1, 1]
    assert [c.channel_id for c in ledger.claim_candidates()] == [bad]
