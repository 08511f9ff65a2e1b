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
from agoranet.payments.accept.settlement import ClaimPolicy, Settler
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.accept.verifier import OnchainState
from agoranet.payments.receipts import ReceiptSigner

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
                                  "retry_after": 0.0, **policy}),
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


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class PickyChain(FakeChain):
    """Claims of a channel whose stored signature is in ``bad`` revert; settles may fail."""

    def __init__(self) -> None:
        super().__init__()
        self.bad: set[str] = set()
        self.settle_fails = 0
        self.attempts: list[list[str]] = []  # channel ids of every claim tried

    def facilitate(self, payment: PaymentPayload, req: PaymentRequirements) -> SettleResponse:
        claims = payment.payload.get("claims")
        if claims is not None:
            self.attempts.append([c["signature"] for c in claims])
            if any(c["signature"] in self.bad for c in claims):
                return SettleResponse(success=False, error_reason="claim_simulation_failed",
                                      error_message="InvalidSignature", network="eip155:31337",
                                      transaction="")
        elif self.settle_fails:
            self.settle_fails -= 1
            return SettleResponse(success=False, error_reason="settle_simulation_failed",
                                  network="eip155:31337", transaction="")
        return super().facilitate(payment, req)


def _channels(ledger: SqliteLedger, n: int) -> list[str]:
    cids = ["0x" + f"{i + 1:02x}" * 32 for i in range(n)]
    for cid in cids:
        ledger.ensure_channel(cid, json.dumps(CONFIG.to_dict()), ADDR[0], 0)
    return cids


def _serve(ledger: SqliteLedger, cid: str, amount: int, signature: str) -> None:
    ch = ledger.channel(cid)
    assert ch is not None
    hold = ledger.accept_voucher(f"r{len(ledger.receipts())}", cid, ch.charged + amount,
                                 signature, amount)
    ledger.commit(hold, 1, 1, amount, SIGNER.sign, 31337)


def test_a_claim_that_keeps_reverting_is_set_aside_not_retried_every_tick(
        tmp_path: Path) -> None:
    """#12: one channel's claim always reverts. It is isolated with a back-off and surfaced
    in the earnings; it neither triggers claims by itself nor holds up the others."""
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    good, bad = _channels(ledger, 2)
    chain, clock = PickyChain(), Clock()
    chain.bad = {"0x" + "bb" * 65}
    s = Settler(ledger, chain.facilitate, REQ, chain.state,
                ClaimPolicy(min_amount=100, max_requests=10**6, max_age=10**6,
                            retry_after=30.0, max_retry_after=100.0), clock=clock)
    _serve(ledger, bad, 500, "0x" + "bb" * 65)  # above the threshold on its own
    _serve(ledger, good, 50, "0x" + "22" * 65)
    outcome = s.tick()
    assert outcome is not None and outcome.claimed == {good: 50} and outcome.failed == (bad,)
    [failure] = ledger.claim_failures()
    assert (failure.channel_id, failure.failures) == (bad, 1)
    assert failure.retry_at == clock.now + 30.0 and "InvalidSignature" in failure.last_error
    tried = len(chain.attempts)
    for _ in range(5):  # ticks within the back-off: the bad channel is neither due nor tried
        clock.now += 5
        assert s.tick() is None
    assert len(chain.attempts) == tried
    _serve(ledger, good, 100, "0x" + "22" * 65)  # the others are still claimed when due
    clock.now += 1
    outcome = s.tick()
    assert outcome is not None and outcome.claimed == {good: 150} and outcome.failed == ()
    assert all("0x" + "bb" * 65 not in a for a in chain.attempts[tried:])
    for failures, wait in ((2, 60.0), (3, 100.0), (4, 100.0), (5, 100.0)):
        clock.now = failure.retry_at  # back-off over: tried again, alone; the wait doubles
        with pytest.raises(PaymentError, match="InvalidSignature"):
            s.tick()
        assert chain.attempts[-1] == ["0x" + "bb" * 65]
        [failure] = ledger.claim_failures()
        assert (failure.failures, failure.retry_at) == (failures, clock.now + wait)
    [failure] = ledger.claim_failures()
    assert failure.failures == 5 and failure.retry_at == clock.now + 100.0  # capped
    rows = {e.channel_id: e for e in ledger.earnings()}
    assert rows[bad].claim_failures == 5 and "InvalidSignature" in rows[bad].claim_error
    assert rows[good].claim_failures == 0 and rows[good].claimed == 150
    chain.bad = set()  # whatever it was got fixed: the next try claims and clears the record
    clock.now = failure.retry_at
    outcome = s.tick()
    assert outcome is not None and outcome.claimed == {bad: 500}
    assert ledger.claim_failures() == []
    assert sum(e.claimed for e in ledger.earnings()) == sum(r.amount for r in ledger.receipts())


def test_a_forced_tick_retries_a_set_aside_channel_at_once(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    [cid] = _channels(ledger, 1)
    chain, clock = PickyChain(), Clock()
    chain.bad = {"0x" + "bb" * 65}
    s = Settler(ledger, chain.facilitate, REQ, chain.state, ClaimPolicy(min_amount=1),
                clock=clock)
    _serve(ledger, cid, 40, "0x" + "bb" * 65)
    with pytest.raises(PaymentError):
        s.tick()
    assert s.tick() is None  # set aside
    chain.bad = set()
    outcome = s.tick(force=True)
    assert outcome is not None and outcome.claimed == {cid: 40}


def test_a_failed_settle_is_retried_on_its_own(tmp_path: Path) -> None:
    """#21: claimed 50, the settle fails: the next ticks retry the settle (after a back-off)
    with no new claim due, and the earnings show what waits to be settled."""
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    [cid] = _channels(ledger, 1)
    chain, clock = PickyChain(), Clock()
    chain.settle_fails = 2
    s = Settler(ledger, chain.facilitate, REQ, chain.state,
                ClaimPolicy(min_amount=50, retry_after=10.0), clock=clock,
                settled_of=lambda tx: 50)
    for _ in range(5):
        _serve(ledger, cid, 10, "0x" + "22" * 65)
    outcome = s.tick()
    assert outcome is not None and outcome.claimed == {cid: 50}
    assert outcome.settled == 0 and outcome.settle_tx == "" and outcome.settle_error
    assert ledger.unsettled() == 50
    [row] = ledger.earnings()
    assert (row.claimed, row.settled, row.pending_settle) == (50, 0, 50)
    clock.now += 1
    assert s.tick() is None  # within the back-off
    clock.now += 10
    with pytest.raises(PaymentError, match="settle failed"):  # the second failure
        s.tick()
    clock.now += 21  # the back-off doubled to 20 s
    outcome = s.tick()
    assert outcome is not None and outcome.reason == "pending settle"
    assert (outcome.claimed, outcome.settled) == ({}, 50) and outcome.settle_tx
    [row] = ledger.earnings()
    assert (row.claimed, row.settled, row.pending_settle) == (50, 50, 0)
    assert ledger.unsettled() == 0 and s.tick() is None


def test_a_forced_tick_settles_what_is_pending(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    [cid] = _channels(ledger, 1)
    chain, clock = PickyChain(), Clock()
    chain.settle_fails = 1
    s = Settler(ledger, chain.facilitate, REQ, chain.state, ClaimPolicy(min_amount=10),
                clock=clock)
    _serve(ledger, cid, 10, "0x" + "22" * 65)
    assert s.tick() is not None and ledger.unsettled() == 10
    outcome = s.tick(force=True)  # no claim is due, the settle still goes
    assert outcome is not None and outcome.settle_tx and ledger.unsettled() == 0


def test_nothing_to_settle_on_chain_marks_the_claims_settled(tmp_path: Path) -> None:
    """Someone else (anyone may) settled for the node, or a settle's answer was lost."""
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    [cid] = _channels(ledger, 1)
    _serve(ledger, cid, 10, "0x" + "22" * 65)
    ledger.record_claim({cid: 10}, "0x01", 0)

    def facilitate(payment: PaymentPayload, _: PaymentRequirements) -> SettleResponse:
        return SettleResponse(success=False, error_reason="invalid_batch_settlement_evm_"
                              "nothing_to_settle", network="eip155:31337", transaction="")

    outcome = Settler(ledger, facilitate, REQ, FakeChain().state, ClaimPolicy()).tick()
    assert outcome is not None and outcome.reason == "pending settle"
    [row] = ledger.earnings()
    assert (row.settled, row.pending_settle) == (10, 0)


def test_a_stored_high_s_voucher_is_claimed_with_its_canonical_twin(tmp_path: Path) -> None:
    """A voucher a node stored before the canonical rule is still claimable."""
    from agoranet.payments.ecdsa import SECP256K1_N, DigestSigner, canonical_signature

    good = DigestSigner(bytes(Account.create().key)).sign(b"\x07" * 32)
    s_value = int.from_bytes(good[32:64], "big")
    twin = good[:32] + (SECP256K1_N - s_value).to_bytes(32, "big") + bytes([55 - good[64]])
    assert canonical_signature(twin) == good
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    [cid] = _channels(ledger, 1)
    _serve(ledger, cid, 10, "0x" + twin.hex())
    chain = PickyChain()
    assert Settler(ledger, chain.facilitate, REQ, chain.state, ClaimPolicy()).tick(force=True)
    assert chain.attempts == [["0x" + good.hex()]]


def test_each_threshold_at_exactly_its_value(setup: tuple[SqliteLedger, FakeChain]) -> None:
    """A claim is due when a threshold is reached (>=), not only when passed, and not one
    base unit, request or second before."""
    ledger, chain = setup
    charge(ledger, 4, 250)  # 1000 unclaimed in 4 requests
    [c] = ledger.claim_candidates()
    assert (c.unclaimed, c.unclaimed_requests) == (1000, 4)
    young = c.oldest_unclaimed_at  # "now" is the oldest charge's own time: age 0
    assert settler(ledger, chain, min_amount=1000).due([c], now=young) == "amount"
    assert settler(ledger, chain, min_amount=1001).due([c], now=young) == ""
    assert settler(ledger, chain, min_amount=10**9, max_requests=4).due(
        [c], now=young) == "requests"
    assert settler(ledger, chain, min_amount=10**9, max_requests=5).due([c], now=young) == ""
    aged = settler(ledger, chain, min_amount=10**9, max_requests=10**6, max_age=60.0)
    assert aged.due([c], now=young + 60.0) == "age"
    assert aged.due([c], now=young + 59.999) == ""
    # and the tick claims at exactly the amount
    outcome = settler(ledger, chain, min_amount=1000, max_requests=10**6).tick()
    assert outcome is not None and outcome.reason == "amount" and outcome.claimed == {CID: 1000}
