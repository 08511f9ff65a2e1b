"""The ``exact`` scheme (an EIP-3009 ``transferWithAuthorization`` per payment): both halves.

Server half (:class:`ExactServer`): the payment authorizes a transfer of exactly the
amount it names (at least the request's worst case) from the buyer to the node. It is
verified through the x402 SDK's exact facilitator when it arrives and settled on chain
(:meth:`ExactServer.settle`: the node's ``settle_exact_before`` setting says before or
after the answer); the charge is that fixed amount, receipted once, with no running
receipts (the transfer's nonce stands in for the channel in the receipt).

Client half (:class:`ExactClient`): signs the EIP-712 ``TransferWithAuthorization`` for
exactly the requirement's amount with the buyer's key (a fresh random nonce, valid for
the requirement's ``maxTimeoutSeconds``), within the caller's cap, to the payee and in
the token it expects; checks the ``PAYMENT-RESPONSE`` (success, network, payer, the
receipt's signer, request, nonce and amount). An ``exact`` payment keeps no state across
requests, so there is no corrective 402 to adopt: a refused one is simply paid afresh.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from eth_account.signers.local import LocalAccount
from x402.mechanisms.evm.exact.facilitator import ExactEvmScheme
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse

from agoranet.errors import CannotPayError, PaymentError, PaymentRequiredError, ReceiptError
from agoranet.market import TokenPrices
from agoranet.payments import payload_shapes, x402wire
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.payments.schemes.base import (
    Authorization,
    ChainAccess,
    ClientPayment,
    Paid,
    Scheme,
    ServerContext,
)
from agoranet.payments.schemes.registry import register_scheme

__all__ = ["EXACT", "SCHEME_EXACT", "TRANSFER_WITH_AUTHORIZATION", "ExactClient",
           "ExactServer"]

SCHEME_EXACT: Final = "exact"
ZERO_CHANNEL: Final = "0x" + "00" * 32

# EIP-3009's typed message, as the token's EIP-712 domain checks it.
TRANSFER_WITH_AUTHORIZATION: Final = {"TransferWithAuthorization": [
    {"name": "from", "type": "address"}, {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"}, {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"}, {"name": "nonce", "type": "bytes32"}]}

ChainSettler = Callable[[PaymentPayload, PaymentRequirements], SettleResponse]
ChainVerifier = Callable[[PaymentPayload, PaymentRequirements], Any]


class ExactServer:
    """The node's half: ``verify`` and ``settle`` are the SDK exact facilitator's (both,
    or the scheme is not offered)."""

    name: Final = SCHEME_EXACT

    def __init__(self, settle: ChainSettler | None = None,
                 verify: ChainVerifier | None = None) -> None:
        self.settler = settle
        self.verifier = verify

    @property
    def offered(self) -> bool:
        return self.settler is not None and self.verifier is not None

    def requirement(self, ctx: ServerContext, amount: int, prices: TokenPrices | None,
                    corrective: dict[str, Any] | None) -> PaymentRequirements:
        return ctx.terms.requirement(self.name, amount, prices)  # no state to correct

    def holds_ahead(self, payment: PaymentPayload) -> bool:
        return True  # authorizing only verifies the transfer; it is settled after the price

    async def authorize(self, ctx: ServerContext, payment: PaymentPayload, max_amount: int,
                        worst: int, request_id: str) -> Authorization:
        assert self.verifier is not None  # the acceptor takes only offered schemes
        try:
            payload_shapes.exact_payload(payment.payload)
        except ValueError as exc:
            raise PaymentRequiredError(f"malformed exact payload: {exc}",
                                       reason="invalid_exact_evm_payload") from None
        requirements = ctx.terms.requirement(SCHEME_EXACT, int(payment.accepted.amount))
        async with ctx.chain_lock:
            verified = await ctx.verify(self.verifier, payment, requirements,
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

    async def settle(self, ctx: ServerContext, auth: Authorization) -> SettleResponse | None:
        """Move the money on chain (once: a settled payment answers its first result)."""
        assert self.settler is not None
        if auth.settle is None:
            async with ctx.chain_lock:
                auth.settle = await ctx.on_chain(self.settler, auth.extra["payment"],
                                                 auth.requirements,
                                                 what="settling the exact payment",
                                                 deadline=None)
            if not auth.settle.success:
                raise PaymentRequiredError(
                    f"exact payment failed on chain: {auth.settle.error_reason}",
                    reason=auth.settle.error_reason or "settle_failed")
        return auth.settle

    def charge(self, ctx: ServerContext, auth: Authorization, tokens_in: int, tokens_out: int,
               amount: int, quoted: Receipt | None) -> tuple[Receipt, SettleResponse]:
        paid = auth.max_amount  # exact moves a fixed amount
        nonce = str(auth.extra["payment"].payload.get("authorization", {}).get("nonce", ""))
        channel = nonce if len(nonce) == 66 else ZERO_CHANNEL
        receipt = ctx.signer.sign(Receipt(auth.request_id, channel.lower(), tokens_in,
                                          tokens_out, paid, paid, ctx.terms.chain_id))
        base = auth.settle or SettleResponse(success=True, transaction="",
                                             network=ctx.terms.network, payer=auth.payer)
        response = base.model_copy(update={"extra": {"receipt": receipt.to_json()}})
        return receipt, response

    def quote(self, ctx: ServerContext, auth: Authorization, tokens_in: int, tokens_out: int,
              amount: int) -> tuple[Receipt, SettleResponse] | None:
        return None  # a fixed amount: charged at once

    def progress(self, ctx: ServerContext, auth: Authorization, tokens_in: int,
                 tokens_out: int, amount: int) -> dict[str, Any] | None:
        return None  # nothing runs up: no running receipts

    def release(self, ctx: ServerContext, auth: Authorization) -> Receipt | None:
        return None  # nothing held (a verified transfer not yet settled moves nothing)


class ExactClient:
    """The buyer's half: pays with ``account``'s signature, never more than ``max_amount``
    a payment (if set), only to ``pay_to`` and in ``asset`` (if set)."""

    name: Final = SCHEME_EXACT

    def __init__(self, account: LocalAccount, *, max_amount: int | None = None,
                 pay_to: str | None = None, asset: str | None = None) -> None:
        self.account = account
        self.max_amount = max_amount
        self.pay_to = pay_to
        self.asset = asset

    def pay(self, requirement: PaymentRequirements, request_id: str | None = None
            ) -> ClientPayment:
        """A signed transfer of exactly ``requirement.amount`` to ``requirement.pay_to``."""
        if requirement.scheme != self.name:
            raise PaymentError(f"an exact payer cannot pay a {requirement.scheme} requirement")
        try:
            amount = payload_shapes.uint(requirement.amount, "amount")
            payload_shapes.address(requirement.pay_to, "payTo")
            payload_shapes.address(requirement.asset, "asset")
            chain_id = _chain_id(requirement.network)
        except ValueError as exc:
            raise PaymentError(f"the exact requirement is malformed: {exc}") from None
        extra = requirement.extra or {}
        name, version = extra.get("name"), extra.get("version")
        if not isinstance(name, str) or not isinstance(version, str):
            raise PaymentError("the exact requirement names no EIP-712 token name and version "
                               "(extra.name, extra.version)")
        for mine, theirs, what in ((self.pay_to, requirement.pay_to, "pays"),
                                   (self.asset, requirement.asset, "is in token")):
            if mine is not None and mine.lower() != theirs.lower():
                raise PaymentError(f"the requirement {what} {theirs}, not {mine}")
        if self.max_amount is not None and amount > self.max_amount:
            raise CannotPayError(f"the requirement asks {amount} base units, above this "
                                 f"payer's cap of {self.max_amount} a payment")
        authorization = {"from": self.account.address, "to": requirement.pay_to,
                         "value": str(amount), "validAfter": "0",
                         "validBefore": str(int(time.time()) + requirement.max_timeout_seconds),
                         "nonce": "0x" + os.urandom(32).hex()}
        signed = self.account.sign_typed_data(  # (numbers and bytes32 as their wire text)
            {"name": name, "version": version, "chainId": chain_id,
             "verifyingContract": requirement.asset},
            TRANSFER_WITH_AUTHORIZATION, authorization)
        payment = PaymentPayload(x402_version=2, accepted=requirement, payload={
            "authorization": authorization, "signature": "0x" + signed.signature.hex()})
        return ClientPayment(self.name, request_id or uuid.uuid4().hex, amount,
                             x402wire.encode_model(payment),
                             {"nonce": authorization["nonce"].lower(),
                              "pay_to": requirement.pay_to, "network": requirement.network,
                              "chain_id": chain_id})

    def check(self, payment: ClientPayment, response: dict[str, Any], *, model: str = "",
              max_tokens: int | None = None) -> Paid:
        """The server's response to ``payment``: successful, on its network, from this
        payer; its receipt, if it gives one (a node does), signed by the payee, for this
        request, this transfer's nonce and exactly the amount paid."""
        state = payment.state
        problems = [
            (response.get("success") is not True, "does not report success"),
            (response.get("network") != state["network"], "is for another network"),
            (str(response.get("payer") or self.account.address).lower()
             != self.account.address.lower(), "names another payer"),
        ]
        for bad, why in problems:
            if bad:
                raise ReceiptError(f"the exact payment response {why}: {response}"[:300])
        transaction = str(response.get("transaction") or "")
        extra = response.get("extra")
        data = extra.get("receipt") if isinstance(extra, dict) else None
        if data is None:
            return Paid(payment.amount, transaction)
        if not isinstance(data, dict):
            raise ReceiptError(f"the exact payment's receipt is not an object: {data!r}"[:300])
        receipt = Receipt.from_json(data)  # ReceiptError if malformed
        verify_receipt(receipt, state["pay_to"])
        problems = [
            (receipt.request_id != payment.request_id, "is for another request"),
            (receipt.channel_id != state["nonce"], "is for another transfer"),
            (receipt.chain_id != state["chain_id"], "is for another chain"),
            (receipt.amount != payment.amount or receipt.cumulative != payment.amount,
             f"charges {receipt.amount}, the transfer moved {payment.amount}"),
            (max_tokens is not None and receipt.tokens_out > max_tokens,
             "counts more tokens than max_tokens"),
        ]
        for bad, why in problems:
            if bad:
                raise ReceiptError(f"receipt {receipt.request_id} {why}")
        return Paid(payment.amount, transaction, receipt)

    def adopt(self, required: PaymentRequired) -> bool:
        return False  # no state carries over: a refused payment is paid afresh


def _chain_id(network: str) -> int:
    prefix, _, number = network.partition(":")
    if prefix != "eip155" or not number.isdigit():
        raise ValueError(f"network {network!r} is not eip155:<chain id>")
    return int(number)


def _server(chain: ChainAccess | None) -> ExactServer:
    if chain is None:
        return ExactServer()
    facilitator = ExactEvmScheme(chain.tx_signer)
    return ExactServer(settle=facilitator.settle, verify=facilitator.verify)


EXACT: Final = register_scheme(Scheme(SCHEME_EXACT, _server, ExactClient))
