"""The ``batch-settlement`` scheme (x402 payment channels): both halves.

Server half (:class:`BatchSettlementServer`): the voucher's cumulative amount must
equal the channel's charged total plus this request's maximum (``accepted.amount``, at
least the worst case) -- the spec's only rule, so a retried voucher is fine and a stale
one gets a corrective 402, which carries the channel's latest signed receipt (what backs
its charged total: a payer believes no higher total without one). The voucher is held
in the node's ledger before the request runs; the actual usage is charged after it, and
a long stream gets running receipts for what it has sent so far. ``deposit`` payloads
(the SDK client's first request) are settled on chain through the SDK's facilitator,
then treated as vouchers. The channels are claimed later, in batches, by
:class:`~agoranet.payments.accept.settlement.Settler`.

Client half (:class:`BatchSettlementClient`): a thin adapter over the mutation-tested
:class:`~agoranet.payments.pay.payer.Payer` (which signs the vouchers, checks receipts and
follows a corrective 402 under the rule in its docstring); :mod:`agoranet.payments.
httpx_auth` plugs the same payer into an httpx client.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Final

from x402.mechanisms.evm.batch_settlement import errors as bs_errors
from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
from x402.mechanisms.evm.batch_settlement.constants import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.batch_settlement.facilitator.scheme import BatchSettlementEvmFacilitator
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse

from agoranet.errors import LedgerError, PaymentError, PaymentRequiredError
from agoranet.market import TokenPrices
from agoranet.payments.accept.ledger import VoucherRefused
from agoranet.payments.accept.verifier import (
    ConfigCache,
    OnchainState,
    Voucher,
    check_signature,
    check_state,
    parse_voucher,
)
from agoranet.payments.pay.payer import Payer
from agoranet.payments.receipts import Receipt
from agoranet.payments.schemes.base import (
    Authorization,
    ChainAccess,
    ClientPayment,
    Paid,
    PaymentTerms,
    Scheme,
    ServerContext,
)
from agoranet.payments.schemes.registry import register_scheme

__all__ = ["BATCH_SETTLEMENT", "SCHEME_BATCH_SETTLEMENT", "BatchSettlementClient",
           "BatchSettlementServer", "ChainSettler", "requirement_extra"]

# (payment, requirements) -> settle response; run on the chain executor (chain I/O).
ChainSettler = Callable[[PaymentPayload, PaymentRequirements], SettleResponse]
ChainVerifier = Callable[[PaymentPayload, PaymentRequirements], Any]


def requirement_extra(terms: PaymentTerms, amount: int) -> dict[str, Any]:
    """The channel terms a ``batch-settlement`` entry of a 402 carries."""
    more: dict[str, Any] = {"receiverAuthorizer": terms.receiver_authorizer,
                            "withdrawDelay": terms.withdraw_delay,
                            "assetTransferMethod": "eip3009"}
    if terms.min_deposit:  # else the SDK client deposits a multiple of ``amount``
        more["minDeposit"] = str(max(terms.min_deposit, amount))
    return more


class BatchSettlementServer:
    """The node's half: vouchers held in its ledger, charged, receipted; deposits settled
    with ``deposits`` after ``deposit_verify`` (both, or no deposits with payments)."""

    name: Final = SCHEME_BATCH_SETTLEMENT

    def __init__(self, deposits: ChainSettler | None = None,
                 deposit_verify: ChainVerifier | None = None) -> None:
        self.deposits = deposits  # the facilitator's settle: deposits, and the claims
        self.deposit_verify = deposit_verify
        self._configs = ConfigCache()

    @property
    def offered(self) -> bool:
        return True  # a funded channel pays without any chain call by the node

    def requirement(self, ctx: ServerContext, amount: int, prices: TokenPrices | None,
                    corrective: dict[str, Any] | None) -> PaymentRequirements:
        return ctx.terms.requirement(self.name, amount, prices, corrective)

    def holds_ahead(self, payment: PaymentPayload) -> bool:
        return payment.payload.get("type") != "deposit"  # a deposit goes on chain first

    async def authorize(self, ctx: ServerContext, payment: PaymentPayload, max_amount: int,
                        worst: int, request_id: str) -> Authorization:
        voucher = parse_voucher(payment.payload)
        requirements = ctx.terms.requirement(SCHEME_BATCH_SETTLEMENT, max_amount)
        self._configs.check(voucher, requirements, ctx.terms.chain_id)
        check_signature(voucher, ctx.terms.chain_id)
        settle: SettleResponse | None = None
        if voucher.kind == "deposit":
            settle = await self._deposit(ctx, payment, requirements)
            state = await ctx.cache.refresh(voucher.channel_id)
        else:
            state = await ctx.cache.get(voucher.channel_id, need=voucher.amount)
        check_state(voucher, state)
        try:  # durable before this returns, off the event loop (group commit)
            hold = await ctx.writer.accept_voucher(
                request_id, voucher.channel_id, voucher.amount, voucher.signature, max_amount,
                channel=(json.dumps(voucher.config.to_dict()), voucher.config.payer,
                         state.total_claimed))
        except VoucherRefused as exc:
            raise _refused(exc, voucher, state) from None
        return Authorization(SCHEME_BATCH_SETTLEMENT, request_id, voucher.config.payer,
                             max_amount, requirements, hold=hold, state=state, settle=settle,
                             signer=voucher.config.payer_authorizer)

    async def _deposit(self, ctx: ServerContext, payment: PaymentPayload,
                       requirements: PaymentRequirements) -> SettleResponse:
        if self.deposits is None or self.deposit_verify is None:
            raise PaymentRequiredError("this node takes no deposits with payments: open the "
                                       "channel yourself", reason=bs_errors.ERR_DEPOSIT_PAYLOAD)
        async with ctx.chain_lock:
            verified = await ctx.verify(self.deposit_verify, payment, requirements,
                                        what="verifying the deposit",
                                        reason=bs_errors.ERR_DEPOSIT_PAYLOAD)
            if not verified.is_valid:
                raise PaymentRequiredError(
                    f"deposit refused: {verified.invalid_reason} {verified.invalid_message or ''}"
                    .strip(), reason=verified.invalid_reason or bs_errors.ERR_DEPOSIT_PAYLOAD)
            settled = await ctx.on_chain(self.deposits, payment, requirements,
                                         what="settling the deposit", deadline=None)
        if not settled.success:
            raise PaymentRequiredError(f"deposit failed on chain: {settled.error_reason}",
                                       reason=settled.error_reason or "deposit_failed")
        return settled

    async def settle(self, ctx: ServerContext, auth: Authorization) -> SettleResponse | None:
        return None  # vouchers are claimed later, in batches (Settler)

    def charge(self, ctx: ServerContext, auth: Authorization, tokens_in: int, tokens_out: int,
               amount: int, quoted: Receipt | None) -> tuple[Receipt, SettleResponse]:
        assert auth.hold is not None and auth.state is not None
        sign = ctx.signer.sign if quoted is None else _exactly(quoted)
        receipt = ctx.ledger.commit(auth.hold, tokens_in, tokens_out, amount, sign,
                                    ctx.terms.chain_id)
        return receipt, self.voucher_response(ctx.terms.network, auth, receipt)

    def quote(self, ctx: ServerContext, auth: Authorization, tokens_in: int, tokens_out: int,
              amount: int) -> tuple[Receipt, SettleResponse] | None:
        if auth.hold is None or auth.state is None or auth.done:
            return None
        hold = auth.hold
        charge = min(amount, hold.max_amount)
        receipt = ctx.signer.sign(Receipt(hold.request_id, hold.channel_id, tokens_in,
                                          tokens_out, charge, hold.charged_before + charge,
                                          ctx.terms.chain_id))
        return receipt, self.voucher_response(ctx.terms.network, auth, receipt)

    def voucher_response(self, network: str, auth: Authorization,
                         receipt: Receipt) -> SettleResponse:
        """The payment response for ``receipt``: the charge, the channel's state, the
        receipt (and the deposit's transaction, if one went on chain with the request)."""
        assert auth.hold is not None and auth.state is not None
        state = auth.state.snapshot(auth.hold.channel_id)
        state["chargedCumulativeAmount"] = str(receipt.cumulative)
        extra = {"chargedAmount": str(receipt.amount), "channelState": state,
                 "receipt": receipt.to_json()}
        if auth.settle is not None:  # a deposit went on chain with this request
            return auth.settle.model_copy(update={"extra": extra})
        return SettleResponse(success=True, payer=auth.payer, transaction="",
                              network=network, amount="", extra=extra)

    def progress(self, ctx: ServerContext, auth: Authorization, tokens_in: int,
                 tokens_out: int, amount: int) -> dict[str, Any] | None:
        if auth.hold is None or auth.done:
            return None
        receipt = ctx.ledger.progress(auth.hold, tokens_in, tokens_out, amount,
                                      ctx.signer.sign, ctx.terms.chain_id)
        return {"success": True, "payer": auth.payer, "network": ctx.terms.network,
                "extra": {"chargedAmount": str(receipt.amount), "running": True,
                          "receipt": receipt.to_json()}}

    def release(self, ctx: ServerContext, auth: Authorization) -> Receipt | None:
        if auth.hold is not None:
            return ctx.ledger.release(auth.hold)
        return None


def _refused(exc: VoucherRefused, voucher: Voucher, state: OnchainState) -> PaymentRequiredError:
    if exc.reason == "busy":
        return PaymentRequiredError(str(exc), reason=bs_errors.ERR_CHANNEL_BUSY)
    if exc.reason == "charged":
        return PaymentRequiredError(str(exc), reason="request_already_charged",
                                    status_code=409)
    if exc.reason == "request-id-in-use":  # the buyer picks another id; nothing held
        return PaymentRequiredError(str(exc), reason="request_id_in_use", status_code=409)
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


def _exactly(sent: Receipt) -> Callable[[Receipt], Receipt]:
    """A signer that gives ``sent`` for the receipt it signs, and refuses any other."""
    def sign(unsigned: Receipt) -> Receipt:
        if dataclasses.replace(sent, signer="", signature="") != unsigned:
            raise LedgerError(f"the charge for {unsigned.request_id} no longer matches the "
                              "receipt sent for it")
        return sent

    return sign


class BatchSettlementClient:
    """The buyer's half for one node: ``payer`` (a :class:`~agoranet.payments.pay.payer.Payer`
    on an open channel to it) signs, checks and resyncs."""

    name: Final = SCHEME_BATCH_SETTLEMENT

    def __init__(self, payer: Payer) -> None:
        self.payer = payer

    def pay(self, requirement: PaymentRequirements, request_id: str | None = None
            ) -> ClientPayment:
        """The next cumulative voucher: charged so far plus ``requirement.amount``."""
        if requirement.scheme != self.name:
            raise PaymentError(f"a {self.name} payer cannot pay a {requirement.scheme} "
                               "requirement")
        if requirement.pay_to.lower() != self.payer.node.lower() or \
                requirement.network != self.payer.network:
            raise PaymentError(f"the requirement pays {requirement.pay_to} on "
                               f"{requirement.network}; this payer's channel is to "
                               f"{self.payer.node} on {self.payer.network}")
        pending = self.payer.pay(int(requirement.amount), request_id)
        return ClientPayment(self.name, pending.request_id, pending.max_amount, pending.header,
                             pending)

    def check(self, payment: ClientPayment, response: dict[str, Any], *, model: str = "",
              max_tokens: int | None = None) -> Paid:
        receipt = self.payer.settle(payment.state, response, model, max_tokens=max_tokens)
        return Paid(receipt.amount, str(response.get("transaction") or ""), receipt)

    def adopt(self, required: PaymentRequired) -> bool:
        """A corrective 402 (``*_mismatch``) for this channel: the payer's resync rule."""
        accept = next((a for a in required.accepts if a.scheme == self.name), None)
        if accept is None or not required.error or "mismatch" not in required.error:
            return False
        return self.payer.resync(accept.extra or {})


def _server(chain: ChainAccess | None) -> BatchSettlementServer:
    if chain is None:
        return BatchSettlementServer()
    facilitator = BatchSettlementEvmFacilitator(
        chain.tx_signer, authorizer_signer=LocalAuthorizerSigner(chain.key))
    return BatchSettlementServer(deposits=facilitator.settle,
                                 deposit_verify=facilitator.verify)


BATCH_SETTLEMENT: Final = register_scheme(Scheme(
    SCHEME_BATCH_SETTLEMENT, _server, BatchSettlementClient, requirement_extra))
