"""Buying one call from a seller that takes only ``exact``: one EIP-3009 transfer a call.

A seller whose signed offer lists ``exact`` and no ``batch-settlement`` is paid from the
gateway's wallet account, per call, under the caller's budget like any other (see
:class:`ExactBuyer`):

1. the seller's 402 to an unpaid call gives the ``exact`` requirement (a price that
   varies with the arguments is quoted there); its amount must be the offer's fixed
   price (or within its stated bound), paid to the offer's payee in our token;
2. that price is reserved from the caller's budget (over budget: refused, nothing
   signed);
3. the transfer is signed (``scheme_client("exact")``, capped at that price, only to
   that payee, only in our token) and sent with the call and our ``x-request-id``;
4. the answer's payment response is checked (the scheme's client half: successful, on
   this network, from us; its receipt signed by the payee, for this request and this
   transfer, for exactly the amount), and the reservation settled at what moved.

A paid answer without a believable receipt counts the whole price as spent (the signed
transfer is the seller's to settle) and as a receipt disagreement; no answer at all is a
plain failure, and counts the price as spent too -- the seller holds a valid transfer
until its ``validBefore`` -- unless the buyer's ``cancel`` (the token's EIP-3009
``cancelAuthorization``, :mod:`agoranet.payments.pay.exact_cancel`) gets its nonce cancelled
on chain first: then the transfer can never happen and nothing is spent (a cancel that
finds the nonce used, or a chain that cannot say, leaves it spent); an error without a
payment response moved nothing and is a plain failure; a 400 is the buyer's mistake.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
from x402.schemas import PaymentRequirements

from agoranet.errors import AgoranetError, InvalidRequestError, PaymentError, ReceiptError
from agoranet.gateway.budget import Reserver
from agoranet.gateway.tool_outcome import CallOutcome, error_text, result_of, unpaid_outcome
from agoranet.payments import x402wire
from agoranet.payments.schemes import SCHEME_BATCH_SETTLEMENT, SCHEME_EXACT, scheme_client
from agoranet.registry.tool_offer import OfferedTool

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from agoranet.gateway.tool_directory import ToolSeller
    from agoranet.payments.schemes import ClientPayment, SchemeClient

__all__ = ["ExactBuyer", "Post", "exact_only"]

logger = logging.getLogger(__name__)

# POST the arguments (with these headers) to a tool's URL; the answer read into memory.
Post = Callable[[str, dict[str, Any], "dict[str, str] | None"], Awaitable[httpx.Response]]


def exact_only(seller: ToolSeller) -> bool:
    """Whether ``seller``'s offer takes ``exact`` and no ``batch-settlement``."""
    terms = seller.offer.payment if seller.offer is not None else None
    return terms is not None and SCHEME_EXACT in terms.schemes \
        and SCHEME_BATCH_SETTLEMENT not in terms.schemes


class ExactBuyer:
    """Pays calls with ``exact`` transfers from ``account`` (see the module's docstring);
    ``stablecoin`` is our chain's token (the only one paid in), ``post`` sends a call."""

    def __init__(self, account: LocalAccount, stablecoin: Callable[[], Awaitable[str]],
                 post: Post, cancel: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self.account = account
        self.stablecoin = stablecoin
        self.post = post
        self.cancel = cancel  # cancels a transfer's nonce on chain: True if it was unused

    async def buy(self, seller: ToolSeller, tool: OfferedTool, url: str,
                  arguments: dict[str, Any], reserver: Reserver,
                  request_id: str) -> CallOutcome:
        """One paid call of ``tool`` at ``url``: priced, reserved, paid, checked."""
        assert seller.offer is not None and seller.offer.payment is not None
        terms = seller.offer.payment
        try:
            token = await self.stablecoin()
        except (AgoranetError, OSError) as exc:
            return CallOutcome(error=f"cannot pay: our chain cannot be read: {exc}",
                               blameless=True)
        if terms.asset.lower() != token.lower():
            return CallOutcome(error=f"it wants token {terms.asset}, not ours", blameless=True)
        try:
            response = await self.post(url, arguments, None)
        except httpx.HTTPError as exc:
            return CallOutcome(error=f"no answer ({type(exc).__name__})")
        if response.status_code != 402:
            return unpaid_outcome(response)
        requirement = _requirement(response, tool)
        if isinstance(requirement, CallOutcome):
            return requirement
        price = int(requirement.amount)
        reservation = await reserver.reserve(price)  # over budget: refused, nothing signed
        outcome = CallOutcome()
        try:
            client = scheme_client(SCHEME_EXACT, account=self.account, max_amount=price,
                                   pay_to=terms.pay_to, asset=token)
            try:
                payment = client.pay(requirement, request_id)
            except PaymentError as exc:  # its 402 names another payee, or is malformed
                outcome = CallOutcome(error=f"its exact requirement cannot be paid: {exc}")
                return outcome
            try:
                response = await self.post(url, arguments, {
                    x402wire.PAYMENT_SIGNATURE: payment.header,
                    "x-request-id": payment.request_id})
            except httpx.HTTPError as exc:  # the transfer is signed: the seller may settle it
                error = f"no answer after payment ({type(exc).__name__})"
                if await self._cancelled(payment):
                    outcome = CallOutcome(error=f"{error}; its transfer was cancelled on chain "
                                                "before the seller settled it: nothing paid")
                else:
                    outcome = CallOutcome(error=error, amount=price)
                return outcome
            outcome = _settled(client, payment, response)
            return outcome
        finally:
            reservation.release(outcome.amount)


    async def _cancelled(self, payment: ClientPayment) -> bool:
        """Whether ``payment``'s transfer was cancelled on chain unused (False: it was
        used, or the chain could not say)."""
        if self.cancel is None:
            return False
        try:
            return await self.cancel(str(payment.state["nonce"]))
        except (AgoranetError, OSError, ValueError) as exc:
            logger.warning("could not cancel the exact payment %s: %s", payment.request_id,
                           exc)
            return False


def _requirement(response: httpx.Response, tool: OfferedTool) -> PaymentRequirements | CallOutcome:
    """The 402's ``exact`` requirement, its amount the offer's price (or within its bound)."""
    try:
        required = x402wire.decode_payment_required(
            response.headers.get(x402wire.PAYMENT_REQUIRED, ""))
        accept = next(a for a in required.accepts if a.scheme == SCHEME_EXACT)
        amount = int(accept.amount)
    except (PaymentError, StopIteration, ValueError):
        return CallOutcome(error="its 402 carries no exact price")
    fixed = tool.price.amount
    if (fixed is not None and amount != fixed) or not tool.price.allows(amount):
        return CallOutcome(error=f"it asks {amount} for a call its offer prices at "
                                 f"{fixed if fixed is not None else tool.price.max_amount}")
    return accept


def _settled(client: SchemeClient, payment: ClientPayment,
             response: httpx.Response) -> CallOutcome:
    """The outcome of a paid call: its payment response and receipt checked."""
    header = response.headers.get(x402wire.PAYMENT_RESPONSE)
    if header is None:  # the seller says nothing was charged
        if response.status_code == 400:
            return CallOutcome(buyer_error=InvalidRequestError(
                f"the tool refused the arguments: {error_text(response)}", param="arguments"))
        if response.status_code == 200:
            return CallOutcome(error="it answered a paid call without a receipt",
                               charged_failure=True, amount=payment.amount)
        return CallOutcome(error=error_text(response))
    try:
        paid = client.check(payment, x402wire.decode_json(header, x402wire.PAYMENT_RESPONSE))
        if paid.receipt is None:
            raise ReceiptError("its payment response carries no signed receipt")
    except (PaymentError, ValueError) as exc:
        reason = exc if isinstance(exc, ReceiptError) else f"bad payment response: {exc}"
        return CallOutcome(error=f"receipt refused: {reason}", charged_failure=True,
                           amount=payment.amount)
    receipt_json = json.dumps(paid.receipt.to_json())
    ok, result = result_of(response)
    if response.status_code == 200 and ok:
        return CallOutcome(result=result, answered=True, amount=paid.amount,
                           receipt=receipt_json)
    why = error_text(response) if response.status_code != 200 else "its answer is not JSON"
    return CallOutcome(error=f"charged {paid.amount} and failed ({why})",
                       charged_failure=True, amount=paid.amount, receipt=receipt_json)
