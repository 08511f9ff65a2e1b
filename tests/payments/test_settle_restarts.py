"""After a settle went through (or the chain had nothing left to settle) the settler starts
over: the next claim's settle is not held back, a later failure waits the first back-off
again, and the ledger records no transaction and no amount for a sweep that did not happen.
Failed claims and settles are logged with the channel, the count, the wait and the reason.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
from eth_account import Account
from x402.mechanisms.evm.batch_settlement.errors import ERR_NOTHING_TO_SETTLE
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from agoranet.errors import PaymentError
from agoranet.payments.accept.settlement import ClaimPolicy, Settler
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.accept.verifier import OnchainState
from agoranet.payments.receipts import ReceiptSigner

SIGNER = ReceiptSigner(bytes(Account.create().key))
ADDR = [Account.create().address for _ in range(3)]
CONFIG = json.dumps(ChannelConfig.from_dict({
    "payer": ADDR[0], "payerAuthorizer": ADDR[0], "receiver": ADDR[1],
    "receiverAuthorizer": ADDR[1], "token": ADDR[2], "withdrawDelay": 900,
    "salt": "0x" + "00" * 32}).to_dict())
REQ = PaymentRequirements(scheme="batch-settlement", network="eip155:31337", asset=ADDR[2],
                          amount="0", pay_to=ADDR[1], max_timeout_seconds=60)
CID = "0x" + "0c" * 32
NET = "eip155:31337"


class Chain:
    """Claims go through unless ``refuse_claims``; settles answer from ``settles`` in
    order ("ok", "fail" or "nothing"); ``settle_times`` is when each settle was asked."""

    def __init__(self, now: list[float]) -> None:
        self.now = now
        self.settles: list[str] = []
        self.settle_times: list[float] = []
        self.refuse_claims = False
        self.txs = 0

    def facilitate(self, payment: PaymentPayload, req: PaymentRequirements) -> SettleResponse:
        assert req == REQ  # the node's own requirements: its address, the token
        self.txs += 1
        tx = f"0x{self.txs:064x}"
        if "claims" in payment.payload:
            if self.refuse_claims:
                return SettleResponse(success=False, error_reason="reverted", network=NET,
                                      transaction="")
            return SettleResponse(success=True, transaction=tx, network=NET, amount="")
        self.settle_times.append(self.now[0])
        answer = self.settles.pop(0)
        if answer == "ok":
            return SettleResponse(success=True, transaction=tx, network=NET, amount="")
        reason = ERR_NOTHING_TO_SETTLE if answer == "nothing" else "reverted"
        return SettleResponse(success=False, error_reason=reason, network=NET, transaction="")


def _setup(tmp_path: Path, start: float = 0.0) -> tuple[SqliteLedger, Chain, Settler,
                                                         list[float]]:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    ledger.ensure_channel(CID, CONFIG, ADDR[0], 0)
    now = [start]
    chain = Chain(now)
    settler = Settler(ledger, chain.facilitate, REQ, lambda _: OnchainState(10**9, 0, 0, 0, 0.0),
                      ClaimPolicy(min_amount=1, retry_after=10.0, max_retry_after=1000.0),
                      settled_of=lambda tx: 0, clock=lambda: now[0])
    return ledger, chain, settler, now


def _serve(ledger: SqliteLedger, amount: int) -> None:
    ch = ledger.channel(CID)
    assert ch is not None
    hold = ledger.accept_voucher(f"r{len(ledger.receipts())}", CID, ch.charged + amount,
                                 "0x" + "22" * 65, amount)
    ledger.commit(hold, 1, 1, amount, SIGNER.sign, 31337)


def _settlements(ledger: SqliteLedger) -> list[tuple[int, str]]:
    with sqlite3.connect(str(ledger.path)) as db:
        return [(int(a), str(t)) for a, t in
                db.execute("SELECT amount, tx_hash FROM settlements ORDER BY id")]


def _invariants(ledger: SqliteLedger) -> None:
    """Claimed never exceeds what the receipts cover; settled never exceeds claimed."""
    for row in ledger.earnings():
        receipted = sum(r.amount for r in ledger.receipts(row.channel_id))
        assert row.settled + row.pending_settle == row.claimed <= row.charged == receipted


def test_a_settle_that_went_through_lets_the_next_one_go_and_restarts_the_back_off(
        tmp_path: Path) -> None:
    ledger, chain, settler, now = _setup(tmp_path)
    chain.settles = ["ok", "ok", "fail", "ok"]
    _serve(ledger, 10)
    outcome = settler.tick()
    assert outcome is not None and (outcome.claimed, outcome.settle_error) == ({CID: 10}, "")
    assert (outcome.claim_tx, outcome.settle_tx) == (f"0x{1:064x}", f"0x{2:064x}")
    now[0] = 0.5  # the next claim, half a second on: its settle goes at once
    _serve(ledger, 7)
    outcome = settler.tick()
    assert outcome is not None and outcome.claimed == {CID: 17} and outcome.settle_tx
    assert ledger.unsettled() == 0
    _serve(ledger, 3)
    outcome = settler.tick()  # claimed; the settle fails: the first back-off, 10 s
    assert outcome is not None and outcome.settle_error and ledger.unsettled() == 3
    now[0] = 10.4
    assert settler.tick() is None
    now[0] = 10.5
    outcome = settler.tick()
    assert outcome is not None and outcome.reason == "pending settle" and outcome.settle_tx
    assert chain.settle_times == [0.0, 0.5, 0.5, 10.5]
    assert ledger.unsettled() == 0
    _invariants(ledger)


def test_nothing_left_to_settle_records_no_sweep_and_restarts_the_back_off(
        tmp_path: Path) -> None:
    """The chain says nothing is left to settle (someone settled for the node, or the
    answer to a settle was lost): the claims count as settled, the ledger's record of it
    names no transaction and no amount, and the settle's failure count starts over."""
    ledger, chain, settler, now = _setup(tmp_path)
    chain.settles = ["fail", "nothing", "fail", "ok"]
    _serve(ledger, 10)
    outcome = settler.tick()  # claimed; the settle fails (once)
    assert outcome is not None and outcome.claimed == {CID: 10} and outcome.settle_error
    outcome = settler.tick(force=True)  # the chain: nothing to settle
    assert outcome is not None
    assert (outcome.claimed, outcome.claim_tx) == ({}, "")  # no claim was due
    assert (outcome.settled, outcome.settle_tx, outcome.settle_error) == (0, "", "")
    assert ledger.unsettled() == 0 and ledger.earnings()[0].settled == 10
    assert _settlements(ledger) == [(0, "")]
    now[0] = 0.5  # a new claim's settle is not held back by the old failure
    _serve(ledger, 4)
    outcome = settler.tick()
    assert outcome is not None and outcome.claimed == {CID: 14} and outcome.settle_error
    now[0] = 10.4  # and its failure is the first in a row again: 10 s, not 20 s
    assert settler.tick() is None
    now[0] = 10.5
    outcome = settler.tick()
    assert outcome is not None and outcome.settle_tx and ledger.unsettled() == 0
    assert chain.settle_times == [0.0, 0.0, 0.5, 10.5]
    _invariants(ledger)


def test_failed_claims_and_settles_are_logged_with_channel_count_wait_and_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ledger, chain, settler, now = _setup(tmp_path, start=1000.0)
    chain.refuse_claims = True
    _serve(ledger, 10)
    caplog.set_level(logging.INFO, logger="agoranet.payments.accept.settlement")
    with pytest.raises(PaymentError):
        settler.tick()
    now[0] = 1010.0
    with pytest.raises(PaymentError):
        settler.tick()
    chain.refuse_claims = False
    chain.settles = ["fail"]
    now[0] = 1030.0
    outcome = settler.tick()
    assert outcome is not None and outcome.claimed == {CID: 10} and outcome.settle_error
    assert [r.getMessage() for r in caplog.records
            if r.name == "agoranet.payments.accept.settlement"] == [
        f"claim for channel {CID} failed (1 in a row), set aside for 10 s: "
        "claim failed: reverted",
        f"claim for channel {CID} failed (2 in a row), set aside for 20 s: "
        "claim failed: reverted",
        "settle failed (1 in a row), retrying in 10 s: settle failed: reverted",
        "claimed 1 channel(s) (amount), settled 0",
    ]
    _invariants(ledger)


def test_when_nothing_went_through_the_error_names_each_channels_failure(
        tmp_path: Path) -> None:
    ledger, chain, settler, _ = _setup(tmp_path)
    other = "0x" + "0e" * 32
    ledger.ensure_channel(other, CONFIG, ADDR[0], 0)
    for cid in (CID, other):
        hold = ledger.accept_voucher(f"r-{cid}", cid, 10, "0x" + "22" * 65, 10)
        ledger.commit(hold, 1, 1, 10, SIGNER.sign, 31337)
    chain.refuse_claims = True
    with pytest.raises(PaymentError) as failed:
        settler.tick(force=True)
    assert str(failed.value) == (f"claim for {CID} failed: claim failed: reverted; "
                                 f"claim for {other} failed: claim failed: reverted")
    assert ledger.unsettled() == 0 and len(ledger.claim_failures()) == 2
    _invariants(ledger)
