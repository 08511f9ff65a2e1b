"""What the settler reports back: each channel's on-chain state to the node's cache (so a
withdrawal seen while deciding to claim is known to the payment path too), and the amount
a settle swept, from the facilitator's answer or the node's own reading of the transaction,
and nothing invented when neither says."""

from __future__ import annotations

import json
import time
from pathlib import Path

from eth_account import Account
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from agoranet.payments.receipts import ReceiptSigner
from agoranet.payments.settlement import ClaimPolicy, Settler
from agoranet.payments.sqlite_ledger import SqliteLedger
from agoranet.payments.verifier import OnchainState

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
