"""x402 payment of fine-tuning jobs: a hold for the whole training, charged when it ends.

Who pays and how: the buyer who creates the job, with a ``batch-settlement``
voucher in the ``PAYMENT-SIGNATURE`` header of ``POST /v1/fine_tuning/jobs``,
for the job's maximum: its trained tokens (counted from the training file with
the model's tokenizer) times its epochs, at the offer's price per million
training tokens. Without one the node answers 402 with the requirements (the
job's tokens and price in the body's ``agoranet`` object) and creates nothing.
An accepted voucher is held in the node's ledger (persisted, fsync'd) *before*
the job is created; the creation answer's ``PAYMENT-RESPONSE`` says so
(``extra.held``: the request id and maximum, no charge yet).

A job is charged only when it ends, in one receipt, by the usual ledger
operations (:class:`~agoranet.payments.accept.acceptor.PaymentAcceptor`): trained to
the end, the whole training (which is the maximum); cancelled, the steps it
trained pro rata (a zero receipt if it never started); failed, its last
running receipt or nothing. While it trains, running receipts for the part
already trained are persisted and shown in the job, so a node that dies
mid-job is paid what the buyer could already see, never more -- the ledger's
recovery at start-up charges that receipt, and the job records it. The
receipt is the ``payment`` of the job object: an x402 payment response
(``extra.chargedAmount``, ``extra.receipt``) whose receipt counts the trained
tokens as ``tokensIn`` (``tokensOut`` is 0), priced at the training price.

Why a hold and not a charge up front: vouchers are cumulative and a charge is
never refunded, so charging the maximum first would overcharge every job that
ends early; holding it charges exactly what was trained. The price is that a
held channel refuses other vouchers ("busy") until the job ends: a buyer pays
jobs from a channel of their own (another payer state, hence another channel),
not the one its inference runs on. ``exact`` (EIP-3009) payments move a fixed
amount and cannot be charged less, so jobs take ``batch-settlement`` only.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from x402.mechanisms.evm.batch_settlement.constants import SCHEME_BATCH_SETTLEMENT
from x402.schemas import PaymentRequired

from agoranet.errors import PaymentRequiredError
from agoranet.market import TokenPrices, cost
from agoranet.payments.accept.acceptor import Authorization, PaymentAcceptor
from agoranet.payments.receipts import Receipt

if TYPE_CHECKING:
    from agoranet.tuning.jobs import FineTuneJob

__all__ = ["JobPayments"]


class JobPayments:
    """The node's :class:`~agoranet.tuning.jobs.Billing`: fine-tuning jobs over x402 holds."""

    def __init__(self, acceptor: PaymentAcceptor, price_per_million: int) -> None:
        self.acceptor = acceptor
        # A job's receipt counts its trained tokens as input tokens at the training price.
        self.prices = TokenPrices(price_per_million, 0)
        self._auths: dict[str, Authorization] = {}  # by request id, while a job holds
        self._lock = threading.Lock()

    # ------------------------------------------------------------ creating a job

    async def authorize(self, header: str | None, amount: int,
                        request_id: str) -> Authorization:
        """Accept and hold the buyer's voucher for a job costing at most ``amount``."""
        acceptor = self.acceptor
        auth = await acceptor.authorize(header, amount, request_id)
        if auth.scheme != SCHEME_BATCH_SETTLEMENT:  # an exact payment is only verified so far
            await acceptor.writer.unsynced(lambda: acceptor.release(auth))
            raise PaymentRequiredError(
                "fine-tuning jobs are paid over a batch-settlement channel (a job that ends "
                "early is charged only what it trained)", reason="unsupported_scheme")
        with self._lock:
            self._auths[auth.request_id] = auth
        return auth

    def payment_required(self, amount: int, exc: PaymentRequiredError,
                         resource: str) -> PaymentRequired:
        required = self.acceptor.payment_required(amount, self.prices, error=exc.reason,
                                                  corrective=exc.corrective, resource=resource)
        accepts = [a for a in required.accepts if a.scheme == SCHEME_BATCH_SETTLEMENT]
        return required.model_copy(update={"accepts": accepts})

    def held(self, auth: Authorization) -> dict[str, Any]:
        """The payment record of a job paid by ``auth`` (held, nothing charged yet)."""
        assert auth.hold is not None
        return {"request_id": auth.request_id, "channel_id": auth.hold.channel_id,
                "payer": auth.payer, "max_amount": str(auth.max_amount), "status": "held",
                "response": None}

    def held_response(self, auth: Authorization, job_id: str) -> dict[str, Any]:
        """The ``PAYMENT-RESPONSE`` of the creation: the voucher is held, not charged."""
        transaction = auth.settle.transaction if auth.settle is not None else ""
        return {"success": True, "payer": auth.payer, "network": self.acceptor.terms.network,
                "transaction": transaction,
                "extra": {"held": True, "requestId": auth.request_id,
                          "maxAmount": str(auth.max_amount), "job": job_id}}

    async def abandon(self, auth: Authorization) -> None:
        """The job could not be created: nothing is charged (the hold released through the
        ledger's writer, as a paid request's)."""
        with self._lock:
            self._auths.pop(auth.request_id, None)
        acceptor = self.acceptor
        await acceptor.writer.unsynced(lambda: acceptor.release(auth))

    # ------------------------------------------------------------ Billing

    def _auth(self, job: FineTuneJob, *, end: bool) -> Authorization | None:
        assert job.payment is not None
        with self._lock:
            if end:
                return self._auths.pop(job.payment["request_id"], None)
            return self._auths.get(job.payment["request_id"])

    def running(self, job: FineTuneJob, tokens: int) -> dict[str, Any]:
        assert job.payment is not None
        auth = self._auth(job, end=False)
        if auth is None:
            return job.payment
        response = self.acceptor.progress(auth, tokens, 0, cost(self.prices, tokens, 0))
        return job.payment if response is None else {**job.payment, "response": response}

    def charge(self, job: FineTuneJob, tokens: int) -> dict[str, Any]:
        assert job.payment is not None
        auth = self._auth(job, end=True)
        if auth is None:  # not held by this process: whatever the ledger recorded
            return self.recovered(job)
        _, settle = self.acceptor.charge(auth, tokens, 0, cost(self.prices, tokens, 0))
        response = settle.model_dump(by_alias=True, exclude_none=True, mode="json")
        return {**job.payment, "status": "charged", "response": response}

    def release(self, job: FineTuneJob) -> dict[str, Any]:
        assert job.payment is not None
        auth = self._auth(job, end=True)
        if auth is None:
            return self.recovered(job)
        return self._outcome(job, self.acceptor.release(auth))

    def recovered(self, job: FineTuneJob) -> dict[str, Any]:
        assert job.payment is not None
        request_id = job.payment["request_id"]
        found = [r for r in self.acceptor.ledger.receipts(job.payment["channel_id"])
                 if r.request_id == request_id]
        return self._outcome(job, found[0] if found else None)

    def _outcome(self, job: FineTuneJob, receipt: Receipt | None) -> dict[str, Any]:
        assert job.payment is not None
        if receipt is None:
            return {**job.payment, "status": "released", "response": None}
        response = {"success": True, "payer": job.payment["payer"],
                    "network": self.acceptor.terms.network, "transaction": "",
                    "extra": {"chargedAmount": str(receipt.amount),
                              "receipt": receipt.to_json()}}
        return {**job.payment, "status": "charged", "response": response}
