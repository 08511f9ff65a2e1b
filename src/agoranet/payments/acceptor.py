"""The node's side of x402: requirements, accepting payments, charging, receipts.

:class:`PaymentAcceptor` knows nothing of HTTP. For a request whose worst case
is ``worst`` base units it builds the 402 requirements, checks a
``PAYMENT-SIGNATURE`` payload, holds the channel (the voucher is persisted in
the ledger before this returns), and after generation charges the actual usage
and signs the receipt that goes back in ``PAYMENT-RESPONSE``. A long stream also
gets running receipts (:meth:`PaymentAcceptor.progress`) for what it has sent so
far; a stream that breaks is charged its last one, never more.

``batch-settlement`` follows the x402 scheme for variable prices: the voucher's
cumulative amount must equal the channel's charged total plus this request's
maximum (``accepted.amount``, at least the worst case) -- the spec's only
rule, so a retried voucher is fine and a stale one gets a corrective 402, which
carries the channel's latest signed receipt (what backs its charged total: a
payer believes no higher total without one). ``deposit``
payloads (the SDK client's first request) are settled on chain through the
SDK's facilitator, then treated as vouchers. ``exact`` (EIP-3009) payments are
verified and settled through the SDK's exact facilitator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from web3.exceptions import Web3Exception
from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.mechanisms.evm.batch_settlement.constants import SCHEME_BATCH_SETTLEMENT
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse

from agoranet.errors import ChainError, LedgerError, PaymentRequiredError
from agoranet.market import TokenPrices
from agoranet.payments import payload_shapes, x402wire
from agoranet.payments.ledger import MAX_AMOUNT, Hold, Ledger, VoucherRefused
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.payments.verifier import (
    ConfigCache,
    OnchainState,
    StateCache,
    Voucher,
    check_signature,
    check_state,
    parse_voucher,
)

__all__ = ["SCHEME_EXACT", "Authorization", "ChainSettler", "PaymentAcceptor", "PaymentTerms"]

SCHEME_EXACT: Final = "exact"
_T = TypeVar("_T")
logger = logging.getLogger(__name__)
ZERO_CHANNEL: Final = "0x" + "00" * 32

# (payment, requirements) -> settle response; run on the chain executor (chain I/O).
ChainSettler = Callable[[PaymentPayload, PaymentRequirements], SettleResponse]


@dataclass(frozen=True)
class PaymentTerms:
    """What a node accepts: chain, token, receiver, channel parameters."""

    chain_id: int
    asset: str
    pay_to: str
    receiver_authorizer: str
    token_name: str
    token_version: str
    withdraw_delay: int = 900
    min_deposit: int = 0
    max_timeout_seconds: int = 3600
    schemes: tuple[str, ...] = (SCHEME_BATCH_SETTLEMENT, SCHEME_EXACT)

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"

    def requirement(self, scheme: str, amount: int, prices: TokenPrices | None = None,
                    extra: dict[str, Any] | None = None) -> PaymentRequirements:
        more: dict[str, Any] = {"name": self.token_name, "version": self.token_version}
        if scheme == SCHEME_BATCH_SETTLEMENT:
            more.update(receiverAuthorizer=self.receiver_authorizer,
                        withdrawDelay=self.withdraw_delay, assetTransferMethod="eip3009")
            if self.min_deposit:  # else the SDK client deposits a multiple of ``amount``
                more["minDeposit"] = str(max(self.min_deposit, amount))
        if prices is not None:
            more["prices"] = {"inputPerMillion": str(prices.input_per_million),
                              "outputPerMillion": str(prices.output_per_million)}
        more.update(extra or {})
        return PaymentRequirements(scheme=scheme, network=self.network, asset=self.asset,
                                   amount=str(amount), pay_to=self.pay_to,
                                   max_timeout_seconds=self.max_timeout_seconds, extra=more)


@dataclass
class Authorization:
    """A payment accepted for one request, until it is charged or released."""

    scheme: str
    request_id: str
    payer: str
    max_amount: int
    requirements: PaymentRequirements
    hold: Hold | None = None
    state: OnchainState | None = None
    settle: SettleResponse | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    done: bool = False
    # The address whose signature the payment carries, checked: the channel's payer
    # authorizer (``batch-settlement``) or the transfer's signer (``exact``).
    signer: str = ""


class PaymentAcceptor:
    """Accepts and charges x402 payments for a node."""

    def __init__(self, terms: PaymentTerms, ledger: Ledger, cache: StateCache,
                 signer: ReceiptSigner, *, deposits: ChainSettler | None = None,
                 deposit_verify: Callable[[PaymentPayload, PaymentRequirements], Any] | None
                 = None, exact: ChainSettler | None = None,
                 exact_verify: Callable[[PaymentPayload, PaymentRequirements], Any] | None
                 = None) -> None:
        self.terms = terms
        self.ledger = ledger
        self.cache = cache
        self.signer = signer
        self._deposits = deposits
        self._deposit_verify = deposit_verify
        self._exact = exact
        self._exact_verify = exact_verify
        self._chain_lock = asyncio.Lock()
        self._configs = ConfigCache()

    # ------------------------------------------------------------ 402

    def payment_required(self, amount: int, prices: TokenPrices | None, *,
                         error: str | None = None, corrective: dict[str, Any] | None = None,
                         resource: str | None = None) -> PaymentRequired:
        accepts = []
        for scheme in self.terms.schemes:
            if scheme == SCHEME_EXACT and self._exact is None:
                continue
            extra = corrective if scheme == SCHEME_BATCH_SETTLEMENT else None
            accepts.append(self.terms.requirement(scheme, amount, prices, extra))
        info = {"url": resource} if resource else None
        return PaymentRequired.model_validate(
            {"x402Version": 2, "error": error, "resource": info,
             "accepts": [a.model_dump(by_alias=True) for a in accepts]})

    # ------------------------------------------------------------ accept

    async def authorize(self, header: str | None, worst: int, request_id: str) -> Authorization:
        """Check the payment in ``header`` for a request costing at most ``worst``."""
        if not header:
            raise PaymentRequiredError(
                f"this request costs up to {worst} base units: pay with x402 "
                f"({x402wire.PAYMENT_SIGNATURE} header)", reason="payment_required")
        payment = x402wire.decode_payment_payload(header)
        accepted = payment.accepted
        if accepted.scheme not in self.terms.schemes:
            raise PaymentRequiredError(f"scheme {accepted.scheme!r} is not accepted here",
                                       reason="unsupported_scheme")
        if accepted.network != self.terms.network:
            raise PaymentRequiredError(
                f"payment is for network {accepted.network}, this node is on "
                f"{self.terms.network}", reason=bs_errors.ERR_NETWORK_MISMATCH)
        if accepted.asset.lower() != self.terms.asset.lower():
            raise PaymentRequiredError(f"payment is in token {accepted.asset}, this node takes "
                                       f"{self.terms.asset}", reason=bs_errors.ERR_TOKEN_MISMATCH)
        if accepted.pay_to.lower() != self.terms.pay_to.lower():
            raise PaymentRequiredError(f"payment is to {accepted.pay_to}, not to this node "
                                       f"({self.terms.pay_to})",
                                       reason=bs_errors.ERR_RECEIVER_MISMATCH)
        try:  # the ledger keeps amounts as SQLite integers: at most MAX_AMOUNT
            max_amount = payload_shapes.uint(accepted.amount, "accepted.amount", 63)
        except ValueError as exc:
            raise PaymentRequiredError(f"{exc} (at most {MAX_AMOUNT})",
                                       reason="invalid_payload") from None
        if max_amount < worst:
            raise PaymentRequiredError(
                f"payment authorizes {max_amount} base units but this request may cost "
                f"{worst}", reason="insufficient_amount")
        if accepted.scheme == SCHEME_EXACT:
            return await self._authorize_exact(payment, worst, request_id)
        return await self._authorize_voucher(payment, max_amount, request_id)

    async def _authorize_voucher(self, payment: PaymentPayload, max_amount: int,
                                 request_id: str) -> Authorization:
        voucher = parse_voucher(payment.payload)
        requirements = self.terms.requirement(SCHEME_BATCH_SETTLEMENT, max_amount)
        self._configs.check(voucher, requirements, self.terms.chain_id)
        check_signature(voucher, self.terms.chain_id)
        settle: SettleResponse | None = None
        if voucher.kind == "deposit":
            settle = await self._deposit(payment, requirements)
            state = await self.cache.refresh(voucher.channel_id)
        else:
            state = await self.cache.get(voucher.channel_id, need=voucher.amount)
        check_state(voucher, state)
        self.ledger.ensure_channel(voucher.channel_id, json.dumps(voucher.config.to_dict()),
                                   voucher.config.payer, state.total_claimed)
        try:
            hold = self.ledger.accept_voucher(request_id, voucher.channel_id, voucher.amount,
                                              voucher.signature, max_amount)
        except VoucherRefused as exc:
            raise self._refused(exc, voucher, state) from None
        return Authorization(SCHEME_BATCH_SETTLEMENT, request_id, voucher.config.payer,
                             max_amount, requirements, hold=hold, state=state, settle=settle,
                             signer=voucher.config.payer_authorizer)

    async def _deposit(self, payment: PaymentPayload,
                       requirements: PaymentRequirements) -> SettleResponse:
        if self._deposits is None or self._deposit_verify is None:
            raise PaymentRequiredError("this node takes no deposits with payments: open the "
                                       "channel yourself", reason=bs_errors.ERR_DEPOSIT_PAYLOAD)
        async with self._chain_lock:
            verified = await self._verify(self._deposit_verify, payment, requirements,
                                          what="verifying the deposit",
                                          reason=bs_errors.ERR_DEPOSIT_PAYLOAD)
            if not verified.is_valid:
                raise PaymentRequiredError(
                    f"deposit refused: {verified.invalid_reason} {verified.invalid_message or ''}"
                    .strip(), reason=verified.invalid_reason or bs_errors.ERR_DEPOSIT_PAYLOAD)
            settled = await self._on_chain(self._deposits, payment, requirements,
                                           what="settling the deposit", deadline=None)
        if not settled.success:
            raise PaymentRequiredError(f"deposit failed on chain: {settled.error_reason}",
                                       reason=settled.error_reason or "deposit_failed")
        return settled

    async def _on_chain(self, fn: Callable[[PaymentPayload, PaymentRequirements], _T],
                        payment: PaymentPayload, requirements: PaymentRequirements, *,
                        what: str, deadline: float | None = -1.0) -> _T:
        """``fn`` on the cache's chain executor (a few dedicated threads, a deadline unless
        ``deadline`` is None: a transaction, once sent, is waited for); a chain that does
        not answer is a prompt 402, before any money moved if it was a deadline or
        the pool being full (a transaction is only abandoned by its own HTTP timeouts)."""
        try:
            return await self.cache.executor.call(functools.partial(fn, payment, requirements),
                                                  what=what, deadline=deadline)
        except ChainError as exc:
            raise PaymentRequiredError(f"{exc}", reason="chain_unavailable") from exc
        except (OSError, Web3Exception) as exc:  # the SDK's own RPC call timed out or failed
            raise PaymentRequiredError(f"{what}: the chain RPC failed: {_short(exc)}",
                                       reason="chain_unavailable") from exc

    async def _verify(self, fn: Callable[[PaymentPayload, PaymentRequirements], _T],
                      payment: PaymentPayload, requirements: PaymentRequirements, *,
                      what: str, reason: str) -> _T:
        """An SDK facilitator's ``verify`` on the chain executor. It assumes a well-formed
        payload: what it raises on a malformed one is the payer's error, a 402."""
        try:
            return await self._on_chain(fn, payment, requirements, what=what)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            logger.info("%s: malformed payload (%s: %s)", what, type(exc).__name__, exc)
            raise PaymentRequiredError(f"malformed payment payload ({what}): "
                                       f"{type(exc).__name__}: {exc}"[:300],
                                       reason=reason) from None

    def _refused(self, exc: VoucherRefused, voucher: Voucher,
                 state: OnchainState) -> PaymentRequiredError:
        if exc.reason == "busy":
            return PaymentRequiredError(str(exc), reason=bs_errors.ERR_CHANNEL_BUSY)
        if exc.reason == "charged":
            return PaymentRequiredError(str(exc), reason="request_already_charged",
                                        status_code=409)
        corrective: dict[str, Any] | None = None
        if exc.channel is not None:
            corrective = {"channelState": {**state.snapshot(exc.channel.channel_id),
                                           "chargedCumulativeAmount": str(exc.channel.charged)}}
            if exc.channel.voucher_signature != "0x":
                corrective["voucherState"] = {
                    "signedMaxClaimable": str(exc.channel.voucher_amount),
                    "signature": exc.channel.voucher_signature}
            if exc.receipt is not None:  # what backs the charged total, for a payer that lost it
                corrective["receipt"] = exc.receipt.to_json()
        return PaymentRequiredError(str(exc), reason=bs_errors.ERR_CUMULATIVE_AMOUNT_MISMATCH,
                                    corrective=corrective)

    async def _authorize_exact(self, payment: PaymentPayload, worst: int,
                               request_id: str) -> Authorization:
        if self._exact is None or self._exact_verify is None:
            raise PaymentRequiredError("this node does not take exact payments",
                                       reason="unsupported_scheme")
        try:
            payload_shapes.exact_payload(payment.payload)
        except ValueError as exc:
            raise PaymentRequiredError(f"malformed exact payload: {exc}",
                                       reason="invalid_exact_evm_payload") from None
        requirements = self.terms.requirement(SCHEME_EXACT, int(payment.accepted.amount))
        async with self._chain_lock:
            verified = await self._verify(self._exact_verify, payment, requirements,
                                          what="verifying the exact payment",
                                          reason="invalid_exact_evm_payload")
        if not verified.is_valid:
            raise PaymentRequiredError(
                f"exact payment refused: {verified.invalid_reason} "
                f"{verified.invalid_message or ''}".strip(),
                reason=verified.invalid_reason or "invalid_exact_payment")
        return Authorization(SCHEME_EXACT, request_id, str(verified.payer or ""),
                             int(payment.accepted.amount), requirements,
                             extra={"payment": payment}, signer=str(verified.payer or ""))

    async def settle_exact(self, auth: Authorization) -> SettleResponse:
        """Move the money of an ``exact`` payment on chain (before or after the answer)."""
        assert self._exact is not None
        if auth.settle is None:
            async with self._chain_lock:
                auth.settle = await self._on_chain(self._exact, auth.extra["payment"],
                                                   auth.requirements,
                                                   what="settling the exact payment",
                                                   deadline=None)
            if not auth.settle.success:
                raise PaymentRequiredError(
                    f"exact payment failed on chain: {auth.settle.error_reason}",
                    reason=auth.settle.error_reason or "settle_failed")
        return auth.settle

    # ------------------------------------------------------------ charge

    def charge(self, auth: Authorization, tokens_in: int, tokens_out: int,
               amount: int, *, quoted: Receipt | None = None) -> tuple[Receipt, SettleResponse]:
        """Charge actual usage (never above the authorization) and sign the receipt; with
        ``quoted`` (from :meth:`quote`, already sent), charge exactly that receipt."""
        auth.done = True
        if auth.scheme == SCHEME_EXACT:
            paid = auth.max_amount  # exact moves a fixed amount
            nonce = str(auth.extra["payment"].payload.get("authorization", {}).get("nonce", ""))
            channel = nonce if len(nonce) == 66 else ZERO_CHANNEL
            receipt = self.signer.sign(Receipt(auth.request_id, channel.lower(), tokens_in,
                                               tokens_out, paid, paid, self.terms.chain_id))
            base = auth.settle or SettleResponse(success=True, transaction="",
                                                 network=self.terms.network, payer=auth.payer)
            response = base.model_copy(update={"extra": {"receipt": receipt.to_json()}})
            return receipt, response
        assert auth.hold is not None and auth.state is not None
        sign = self.signer.sign if quoted is None else _exactly(quoted)
        receipt = self.ledger.commit(auth.hold, tokens_in, tokens_out, amount, sign,
                                     self.terms.chain_id)
        return receipt, self._voucher_response(auth, receipt)

    def quote(self, auth: Authorization, tokens_in: int, tokens_out: int,
              amount: int) -> tuple[Receipt, SettleResponse] | None:
        """The final receipt and payment response :meth:`charge` gives for this usage, signed
        but not charged (``batch-settlement`` only; None for ``exact``): a stream's final
        receipt goes out first and is charged (``charge(..., quoted=)``) once it is sent,
        so a stream cut before it is charged its last running receipt instead."""
        if auth.hold is None or auth.state is None or auth.done:
            return None
        hold = auth.hold
        charge = min(amount, hold.max_amount)
        receipt = self.signer.sign(Receipt(hold.request_id, hold.channel_id, tokens_in,
                                           tokens_out, charge, hold.charged_before + charge,
                                           self.terms.chain_id))
        return receipt, self._voucher_response(auth, receipt)

    def _voucher_response(self, auth: Authorization, receipt: Receipt) -> SettleResponse:
        assert auth.hold is not None and auth.state is not None
        state = auth.state.snapshot(auth.hold.channel_id)
        state["chargedCumulativeAmount"] = str(receipt.cumulative)
        extra = {"chargedAmount": str(receipt.amount), "channelState": state,
                 "receipt": receipt.to_json()}
        if auth.settle is not None:  # a deposit went on chain with this request
            return auth.settle.model_copy(update={"extra": extra})
        return SettleResponse(success=True, payer=auth.payer, transaction="",
                              network=self.terms.network, amount="", extra=extra)

    def progress(self, auth: Authorization, tokens_in: int, tokens_out: int,
                 amount: int) -> dict[str, Any] | None:
        """A running receipt for the part of a stream already sent (``batch-settlement``
        only; None for ``exact``, which moves a fixed amount): persisted, then signed
        and returned as a payment response for the stream."""
        if auth.hold is None or auth.done:
            return None
        receipt = self.ledger.progress(auth.hold, tokens_in, tokens_out, amount,
                                       self.signer.sign, self.terms.chain_id)
        return {"success": True, "payer": auth.payer, "network": self.terms.network,
                "extra": {"chargedAmount": str(receipt.amount), "running": True,
                          "receipt": receipt.to_json()}}

    def release(self, auth: Authorization) -> Receipt | None:
        """The request failed or was abandoned before it finished: charged what its last
        running receipt says (returned), or nothing if none was sent."""
        if auth.done:
            return None
        auth.done = True
        if auth.hold is not None:
            return self.ledger.release(auth.hold)
        return None


def _exactly(sent: Receipt) -> Callable[[Receipt], Receipt]:
    """A signer that gives ``sent`` for the receipt it signs, and refuses any other."""
    def sign(unsigned: Receipt) -> Receipt:
        if dataclasses.replace(sent, signer="", signature="") != unsigned:
            raise LedgerError(f"the charge for {unsigned.request_id} no longer matches the "
                              "receipt sent for it")
        return sent

    return sign


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]
