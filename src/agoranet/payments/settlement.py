"""Claiming earned vouchers on chain in batches, and settling them to the node.

:class:`Settler` reads the ledger's unclaimed channels and, when a threshold is
met (amount, number of requests, age of the oldest unclaimed charge) or a
channel has a pending withdrawal, claims every unclaimed channel with
``claimWithSignature`` (at most ``max_claims_per_tx`` channels, the SDK's batch
size, per transaction; a batch that reverts is retried channel by channel, so
one bad channel does not hold up the others) and then sweeps the claimed money
to the node with ``settle`` -- both through the x402 SDK's facilitator, signed
with the node's own key. Everything it needs is in the ledger, so it resumes
after a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from x402.mechanisms.evm.batch_settlement.constants import DEFAULT_MAX_CLAIMS_PER_BATCH
from x402.mechanisms.evm.batch_settlement.types import (
    ChannelConfig,
    ClaimPayload,
    SettlePayload,
    VoucherClaim,
)
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from agoranet.errors import PaymentError
from agoranet.payments.ledger import ClaimCandidate, Ledger
from agoranet.payments.verifier import OnchainState

__all__ = ["ClaimPolicy", "SettleOutcome", "Settler"]

logger = logging.getLogger(__name__)

Facilitate = Callable[[PaymentPayload, PaymentRequirements], SettleResponse]


@dataclass(frozen=True)
class ClaimPolicy:
    """When to claim: any threshold reached, or a withdrawal pending on a channel."""

    min_amount: int = 1_000_000
    max_requests: int = 1_000
    max_age: float = 3600.0
    max_claims_per_tx: int = DEFAULT_MAX_CLAIMS_PER_BATCH  # channels in one claim transaction


@dataclass(frozen=True)
class SettleOutcome:
    claimed: dict[str, int]
    claim_tx: str = ""
    settled: int = 0
    settle_tx: str = ""
    reason: str = ""


class Settler:
    """Claims and settles a node's earnings (blocking chain I/O: run it in a thread)."""

    def __init__(self, ledger: Ledger, facilitate: Facilitate, requirements: PaymentRequirements,
                 read_state: Callable[[str], OnchainState], policy: ClaimPolicy | None = None,
                 on_state: Callable[[str, OnchainState], None] | None = None,
                 gas_of: Callable[[str], int] | None = None,
                 settled_of: Callable[[str], int] | None = None) -> None:
        self.ledger = ledger
        self._facilitate = facilitate
        self._requirements = requirements
        self._read_state = read_state
        self.policy = policy or ClaimPolicy()
        self._on_state = on_state
        self._gas_of = gas_of or (lambda tx: 0)
        self._settled_of = settled_of or (lambda tx: 0)
        self._lock = threading.Lock()

    def due(self, candidates: list[ClaimCandidate], now: float | None = None) -> str:
        """Why a claim is due now ('' if it is not)."""
        if not candidates:
            return ""
        now = time.time() if now is None else now
        for c in candidates:
            state = self._read_state(c.channel_id)
            if self._on_state is not None:
                self._on_state(c.channel_id, state)
            if state.withdraw_requested_at != 0:
                return f"withdrawal pending on {c.channel_id}"
        if sum(c.unclaimed for c in candidates) >= self.policy.min_amount:
            return "amount"
        if sum(c.unclaimed_requests for c in candidates) >= self.policy.max_requests:
            return "requests"
        if now - min(c.oldest_unclaimed_at for c in candidates) >= self.policy.max_age:
            return "age"
        return ""

    def tick(self, *, force: bool = False) -> SettleOutcome | None:
        """Claim and settle if due (or ``force``); the outcome, or None if nothing was done."""
        with self._lock:
            candidates = self.ledger.claim_candidates()
            reason = "forced" if force and candidates else self.due(candidates)
            if not reason:
                return None
            return self._claim_and_settle(candidates, reason)

    def _claim_and_settle(self, candidates: list[ClaimCandidate], reason: str) -> SettleOutcome:
        totals: dict[str, int] = {}
        claim_txs: list[str] = []
        failures: list[str] = []
        size = max(1, self.policy.max_claims_per_tx)
        for start in range(0, len(candidates), size):
            self._claim_batch(candidates[start:start + size], totals, claim_txs, failures)
        if not totals:
            raise PaymentError("claim failed: " + "; ".join(failures))
        settle = SettlePayload(receiver=self._requirements.pay_to, token=self._requirements.asset)
        settled = self._run(settle.to_dict(), "settle")
        amount = int(settled.amount) if settled.amount else self._settled_of(settled.transaction)
        self.ledger.record_settle(settled.transaction, amount, self._gas_of(settled.transaction))
        logger.info("claimed %d channel(s) (%s) and settled %d", len(totals), reason, amount)
        return SettleOutcome(totals, claim_txs[0], amount, settled.transaction, reason)

    def _claim_batch(self, batch: list[ClaimCandidate], totals: dict[str, int],
                     claim_txs: list[str], failures: list[str]) -> None:
        """Claim ``batch`` in one transaction; if it fails, each channel on its own.

        One channel whose claim reverts (say, withdrawn under the node) must not
        hold up the earnings of every other channel in its batch.
        """
        claims = [VoucherClaim(channel=ChannelConfig.from_dict(json.loads(c.config)),
                               max_claimable_amount=str(c.voucher_amount),
                               signature=c.voucher_signature, total_claimed=str(c.charged))
                  for c in batch]
        try:
            claimed = self._run(ClaimPayload(claims=claims).to_dict(), "claim")
        except PaymentError as exc:
            if len(batch) > 1:
                for one in batch:
                    self._claim_batch([one], totals, claim_txs, failures)
                return
            logger.warning("claim for channel %s failed: %s", batch[0].channel_id, exc)
            failures.append(f"{batch[0].channel_id}: {exc}")
            return
        done = {c.channel_id: c.charged for c in batch}
        self.ledger.record_claim(done, claimed.transaction, self._gas_of(claimed.transaction))
        totals.update(done)
        claim_txs.append(claimed.transaction)

    def _run(self, payload: dict[str, Any], what: str) -> SettleResponse:
        payment = PaymentPayload(payload=payload, accepted=self._requirements)
        try:
            response = self._facilitate(payment, self._requirements)
        except Exception as exc:  # the SDK raises plain exceptions for RPC failures
            raise PaymentError(f"{what} failed: {exc}") from exc
        if not response.success:
            raise PaymentError(f"{what} failed: {response.error_reason} "
                               f"{response.error_message or ''}".strip())
        return response
