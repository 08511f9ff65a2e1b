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

A channel whose claim fails is set aside in the ledger (``claim_failures``)
and retried on its own after a back-off (``retry_after``, doubling up to
``max_retry_after``, which stays below the escrow's shortest withdraw delay),
so a claim that keeps reverting is logged and shown by ``agoranet node
earnings`` but never holds up the other channels' claims. Settling is its own
step: whenever the ledger holds claims no settle has swept yet (a settle that
failed after its claim went through), every tick retries it, backing off the
same way. A voucher stored with a non-canonical signature (by a node from
before the canonical-signature rule) is claimed with its canonical twin.
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
from x402.mechanisms.evm.batch_settlement.errors import ERR_NOTHING_TO_SETTLE
from x402.mechanisms.evm.batch_settlement.types import (
    ChannelConfig,
    ClaimPayload,
    SettlePayload,
    VoucherClaim,
)
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from agoranet.errors import PaymentError
from agoranet.payments.accept.ledger import ClaimCandidate, Ledger
from agoranet.payments.accept.verifier import OnchainState
from agoranet.payments.ecdsa import canonical_signature

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
    retry_after: float = 30.0  # first wait before a failed claim or settle is retried (s)
    max_retry_after: float = 600.0  # the longest wait (below the 900 s minimum withdraw delay)

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row."""
        return min(self.retry_after * 2.0 ** max(0, min(failures, 64) - 1),
                   self.max_retry_after)


@dataclass(frozen=True)
class SettleOutcome:
    claimed: dict[str, int]
    claim_tx: str = ""
    settled: int = 0
    settle_tx: str = ""
    reason: str = ""
    failed: tuple[str, ...] = ()  # channels whose claim failed (set aside, retried later)
    settle_error: str = ""  # the settle failed (retried on its own later)


class Settler:
    """Claims and settles a node's earnings (blocking chain I/O: run it in a thread)."""

    def __init__(self, ledger: Ledger, facilitate: Facilitate, requirements: PaymentRequirements,
                 read_state: Callable[[str], OnchainState], policy: ClaimPolicy | None = None,
                 on_state: Callable[[str, OnchainState], None] | None = None,
                 gas_of: Callable[[str], int] | None = None,
                 settled_of: Callable[[str], int] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self._facilitate = facilitate
        self._requirements = requirements
        self._read_state = read_state
        self.policy = policy or ClaimPolicy()
        self._on_state = on_state
        self._gas_of = gas_of or (lambda tx: 0)
        self._settled_of = settled_of or (lambda tx: 0)
        self._clock = clock
        self._lock = threading.Lock()
        self._settle_failures = 0
        self._settle_retry_at = 0.0

    def due(self, candidates: list[ClaimCandidate], now: float | None = None) -> str:
        """Why a claim is due now ('' if it is not)."""
        if not candidates:
            return ""
        now = self._clock() if now is None else now
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
        """Claim if due (or ``force``), then settle whatever is claimed and not settled yet;
        the outcome, or None if nothing was done. Channels whose claim failed wait out
        their back-off (``force`` retries them at once), as does a failed settle.
        PaymentError if nothing succeeded (the chain is likely unreachable)."""
        with self._lock:
            now = self._clock()
            candidates = self.ledger.claim_candidates()
            if not force:
                waiting = {f.channel_id for f in self.ledger.claim_failures()
                           if f.retry_at > now}
                candidates = [c for c in candidates if c.channel_id not in waiting]
            reason = "forced" if force and candidates else self.due(candidates, now)
            totals: dict[str, int] = {}
            claim_txs: list[str] = []
            failures: list[tuple[str, str]] = []
            if reason:
                size = max(1, self.policy.max_claims_per_tx)
                for start in range(0, len(candidates), size):
                    self._claim_batch(candidates[start:start + size], totals, claim_txs,
                                      failures)
            settled, settle_tx, settle_error = 0, "", ""
            swept = False
            if self.ledger.unsettled() > 0 and (force or now >= self._settle_retry_at):
                reason = reason or "pending settle"
                try:
                    settled, settle_tx = self._settle()
                    swept = True
                except PaymentError as exc:
                    settle_error = str(exc)
            if not reason:
                return None
            if not totals and not swept:  # nothing went through: likely the chain is down
                problems = [f"claim for {cid} failed: {why}" for cid, why in failures]
                raise PaymentError("; ".join(problems + [settle_error] * bool(settle_error)))
            logger.info("claimed %d channel(s) (%s), settled %d", len(totals), reason, settled)
            return SettleOutcome(totals, claim_txs[0] if claim_txs else "", settled, settle_tx,
                                 reason, tuple(cid for cid, _ in failures), settle_error)

    def _settle(self) -> tuple[int, str]:
        """Sweep every claimed, unsettled amount to the node: (amount, transaction)."""
        settle = SettlePayload(receiver=self._requirements.pay_to, token=self._requirements.asset)
        try:
            settled = self._run(settle.to_dict(), "settle")
        except PaymentError as exc:
            if ERR_NOTHING_TO_SETTLE not in str(exc):
                self._settle_failures += 1
                self._settle_retry_at = self._clock() + self.policy.backoff(
                    self._settle_failures)
                logger.warning("settle failed (%d in a row), retrying in %.0f s: %s",
                               self._settle_failures,
                               self._settle_retry_at - self._clock(), exc)
                raise
            # someone (anyone may) settled for the node already, or a settle's answer was
            # lost: the claims are swept on chain
            self.ledger.record_settle("", 0, 0)
            self._settle_failures, self._settle_retry_at = 0, 0.0
            return 0, ""
        amount = int(settled.amount) if settled.amount else self._settled_of(settled.transaction)
        self.ledger.record_settle(settled.transaction, amount, self._gas_of(settled.transaction))
        self._settle_failures, self._settle_retry_at = 0, 0.0
        return amount, settled.transaction

    def _claim_batch(self, batch: list[ClaimCandidate], totals: dict[str, int],
                     claim_txs: list[str], failures: list[tuple[str, str]]) -> None:
        """Claim ``batch`` in one transaction; if it fails, each channel on its own.

        One channel whose claim reverts (say, withdrawn under the node) must not
        hold up the earnings of every other channel in its batch.
        """
        claims = [VoucherClaim(channel=ChannelConfig.from_dict(json.loads(c.config)),
                               max_claimable_amount=str(c.voucher_amount),
                               signature=_claimable(c.voucher_signature),
                               total_claimed=str(c.charged))
                  for c in batch]
        try:
            claimed = self._run(ClaimPayload(claims=claims).to_dict(), "claim")
        except PaymentError as exc:
            if len(batch) > 1:
                for one in batch:
                    self._claim_batch([one], totals, claim_txs, failures)
                return
            failures.append((batch[0].channel_id, str(exc)))
            failed = self.ledger.record_claim_failure(batch[0].channel_id, str(exc),
                                                      self._clock(), self.policy.backoff)
            logger.warning("claim for channel %s failed (%d in a row), set aside for %.0f s: "
                           "%s", batch[0].channel_id, failed.failures,
                           failed.retry_at - self._clock(), exc)
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


def _claimable(signature: str) -> str:
    """The canonical twin of a stored voucher signature (the same if it is canonical)."""
    try:
        canonical = canonical_signature(bytes.fromhex(signature.removeprefix("0x")))
    except ValueError:
        return signature
    return signature if canonical is None else "0x" + canonical.hex()
