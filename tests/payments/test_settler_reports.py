"""What the settler reports back: each channel's on-chain state to the node's cache (so a
withdrawal seen while deciding to claim is known to the payment path too), and the amount
a settle swept, from the facilitator's answer or the node's own reading of the transaction,
and nothing invented when neither says."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from eth_account import Account
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
QUIET = ClaimPolicy(min_amount=10**9, max_requests=10**6, max_age=10**6)


def _ledger(tmp_path: Path, channels: list[str], amount: int = 30) -> SqliteLedger:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    for cid in channels:
        ledger.ensure_channel(cid, CONFIG, ADDR[0], 0)
        hold = ledger.accept_voucher(f"r-{cid}", cid, 40, "0x" + "22" * 65, 40)
        ledger.commit(hold, 1, 1, amount, SIGNER.sign, 31337)
    return ledger


def _facilitator(settle_amount: str) -> object:
    def facilitate(payment: PaymentPayload, _: PaymentRequirements) -> SettleResponse:
        amount = settle_amount if "claims" not in payment.payload else ""
        return SettleResponse(success=True, transaction="0x" + "ab" * 32,
                              network="eip155:31337", amount=amount)
    return facilitate


def test_each_channels_onchain_state_reaches_the_node_under_its_own_id(tmp_path: Path) -> None:
    quiet, leaving = "0x" + "01" * 32, "0x" + "02" * 32
    ledger = _ledger(tmp_path, [quiet, leaving])
    states = {quiet: OnchainState(40, 0, 0, 0, time.monotonic()),
              leaving: OnchainState(40, 0, 1_700_000_000, 0, time.monotonic())}
    told: dict[str, OnchainState] = {}
    settler = Settler(ledger, _facilitator(""), REQ, states.__getitem__, QUIET,
                      on_state=told.__setitem__)
    assert settler.due(ledger.claim_candidates()) == f"withdrawal pending on {leaving}"
    assert told == states
    ledger.close()


def test_a_settle_reports_the_amount_it_swept(tmp_path: Path) -> None:
    cid = "0x" + "03" * 32
    state = OnchainState(40, 0, 0, 0, 0.0)
    # the facilitator says how much it swept
    ledger = _ledger(tmp_path / "a", [cid])
    outcome = Settler(ledger, _facilitator("30"), REQ, lambda _: state, QUIET).tick(force=True)
    assert outcome is not None and (outcome.claimed, outcome.settled) == ({cid: 30}, 30)
    ledger.close()
    # it does not: the node reads the settle transaction itself
    ledger = _ledger(tmp_path / "b", [cid])
    read: list[str] = []
    outcome = Settler(ledger, _facilitator(""), REQ, lambda _: state, QUIET,
                      settled_of=lambda tx: read.append(tx) or 30).tick(force=True)
    assert outcome is not None and outcome.settled == 30 and read == ["0x" + "ab" * 32]
    ledger.close()
    # nobody says: nothing is reported as swept, rather than a made-up figure
    ledger = _ledger(tmp_path / "c", [cid])
    outcome = Settler(ledger, _facilitator(""), REQ, lambda _: state, QUIET).tick(force=True)
    assert outcome is not None and outcome.settled == 0 and ledger.unsettled() == 0
    ledger.close()


def test_a_settle_names_the_token_and_each_transactions_gas_is_read(tmp_path: Path) -> None:
    cid = "0x" + "04" * 32
    ledger = _ledger(tmp_path, [cid])
    payloads: list[dict[str, object]] = []
    asked: list[str] = []

    def facilitate(payment: PaymentPayload, _: PaymentRequirements) -> SettleResponse:
        payloads.append(payment.payload)
        return SettleResponse(success=True, transaction=f"0x{len(payloads):064x}",
                              network="eip155:31337", amount="30")

    settler = Settler(ledger, facilitate, REQ, lambda _: OnchainState(40, 0, 0, 0, 0.0), QUIET,
                      gas_of=lambda tx: asked.append(tx) or 21_000)
    assert settler.tick(force=True) is not None
    assert payloads[-1] == {"type": "settle", "receiver": ADDR[1], "token": ADDR[2]}
    assert asked == [f"0x{1:064x}", f"0x{2:064x}"]  # the claim's, then the settle's
    assert ledger.gas_used() == (2, 42_000)
    ledger.close()


def test_a_failing_claim_says_which_step_failed(tmp_path: Path) -> None:
    cid = "0x" + "05" * 32
    ledger = _ledger(tmp_path, [cid])

    def down(payment: PaymentPayload, _: PaymentRequirements) -> SettleResponse:
        raise OSError("rpc down")

    settler = Settler(ledger, down, REQ, lambda _: OnchainState(40, 0, 0, 0, 0.0), QUIET)
    with pytest.raises(PaymentError, match=f"^claim for {cid} failed: claim failed: rpc down$"):
        settler.tick(force=True)
    ledger.close()


def test_a_settle_that_keeps_failing_waits_longer_each_time(tmp_path: Path) -> None:
    """The first failed settle waits ``retry_after``, the second twice that, and no tick
    in between tries again (a facilitator that is down is not hammered)."""
    cid = "0x" + "06" * 32
    ledger = _ledger(tmp_path, [cid])
    settles: list[float] = []
    now = [0.0]

    def facilitate(payment: PaymentPayload, _: PaymentRequirements) -> SettleResponse:
        if "claims" in payment.payload:
            return SettleResponse(success=True, transaction="0x" + "cd" * 32,
                                  network="eip155:31337", amount="")
        settles.append(now[0])
        return SettleResponse(success=False, error_reason="reverted", network="eip155:31337",
                              transaction="")

    settler = Settler(ledger, facilitate, REQ, lambda _: OnchainState(40, 0, 0, 0, 0.0),
                      ClaimPolicy(min_amount=1, retry_after=10.0, max_retry_after=1000.0),
                      clock=lambda: now[0])
    for t in (0.0, 5.0, 10.0, 25.0, 29.0, 30.0):
        now[0] = t
        with contextlib.suppress(PaymentError):  # a tick whose only step, a settle, failed
            settler.tick()
    assert settles == [0.0, 10.0, 30.0]  # waits 10 s, then 20 s
    assert ledger.unsettled() == 30
    ledger.close()


def test_a_forced_tick_claims_one_channel_per_transaction_when_told(
        tmp_path: Path) -> None:
    cids = ["0x" + "07" * 32, "0x" + "08" * 32]
    ledger = _ledger(tmp_path, cids, amount=1)
    payloads: list[dict[str, object]] = []

    def facilitate(payment: PaymentPayload, _: PaymentRequirements) -> SettleResponse:
        payloads.append(payment.payload)
        return SettleResponse(success=True, transaction=f"0x{len(payloads):064x}",
                              network="eip155:31337", amount="")

    settler = Settler(ledger, facilitate, REQ, lambda _: OnchainState(40, 0, 0, 0, 0.0),
                      ClaimPolicy(max_claims_per_tx=1), settled_of=lambda tx: 2)
    outcome = settler.tick(force=True)
    assert outcome is not None
    assert (outcome.reason, outcome.claimed, outcome.settled, outcome.settle_error) == (
        "forced", dict.fromkeys(cids, 1), 2, "")
    claims = [p["claims"] for p in payloads if "claims" in p]
    assert [len(c) for c in claims] == [1, 1]  # one channel per transaction
    assert ledger.unsettled() == 0
    ledger.close()


def test_nothing_left_to_settle_is_reported_as_nothing_swept(tmp_path: Path) -> None:
    from x402.mechanisms.evm.batch_settlement.errors import ERR_NOTHING_TO_SETTLE

    cid = "0x" + "09" * 32
    ledger = _ledger(tmp_path, [cid])

    def facilitate(payment: PaymentPayload, _: PaymentRequirements) -> SettleResponse:
        if "claims" in payment.payload:
            return SettleResponse(success=True, transaction="0x" + "cd" * 32,
                                  network="eip155:31337", amount="")
        return SettleResponse(success=False, error_reason=ERR_NOTHING_TO_SETTLE,
                              network="eip155:31337", transaction="")

    settler = Settler(ledger, facilitate, REQ, lambda _: OnchainState(40, 0, 0, 0, 0.0), QUIET,
                      settled_of=lambda tx: 99)
    outcome = settler.tick(force=True)
    assert outcome is not None
    assert (outcome.settled, outcome.settle_tx, outcome.settle_error) == (0, "", "")
    assert ledger.unsettled() == 0 and ledger.gas_used() == (1, 0)  # the claim alone


def test_a_refused_claim_reports_the_facilitators_reason(tmp_path: Path) -> None:
    cid = "0x" + "0a" * 32
    ledger = _ledger(tmp_path, [cid])

    def refuse(payment: PaymentPayload, _: PaymentRequirements) -> SettleResponse:
        return SettleResponse(success=False, error_reason="reverted", network="eip155:31337",
                              transaction="")

    settler = Settler(ledger, refuse, REQ, lambda _: OnchainState(40, 0, 0, 0, 0.0), QUIET)
    with pytest.raises(PaymentError, match=f"^claim for {cid} failed: claim failed: reverted$"):
        settler.tick(force=True)


def test_a_single_claimed_unit_is_settled(tmp_path: Path) -> None:
    cid = "0x" + "0b" * 32
    ledger = _ledger(tmp_path, [cid], amount=1)
    outcome = Settler(ledger, _facilitator("1"), REQ, lambda _: OnchainState(40, 0, 0, 0, 0.0),
                      QUIET).tick(force=True)
    assert outcome is not None and (outcome.claimed, outcome.settled) == ({cid: 1}, 1)
    assert ledger.unsettled() == 0
    ledger.close()
