"""x402 payment of one tool call, through the node's :class:`PaymentAcceptor`.

A call is priced before anything is paid (fixed, or from its validated arguments),
and its payment is checked against that price and that tool:

- the payment's ``accepted`` requirement names this tool (``extra.tool``, which the
  402 carries and an x402 client echoes) and its ``resource``, when sent, is this
  tool's (``…/tools/NAME`` over HTTP, ``mcp://tool/NAME`` over MCP): a payment made
  for another tool is refused;
- ``exact`` (EIP-3009) must move exactly the price; ``batch-settlement`` must
  authorize at least the price beyond what the channel was charged (the acceptor's
  rule: a replayed voucher no longer adds up and gets a corrective 402);
- one ``exact`` authorization is used by one call at a time (a replay sent while the
  first still runs is refused; once settled, the chain refuses its nonce);
- a request id (the buyer's, which the receipt carries) names one running call: a
  second call under it while the first runs is a 400.

Nothing moves before the tool has answered: a voucher is held (persisted) while the
tool runs and charged the price after (over HTTP once the answer, carrying the signed
receipt, has gone out: :meth:`ToolPayments.charge_later`), an ``exact`` payment is
verified before and settled on chain after. A tool that raises is released: charged
nothing. A receipt for a tool call counts one call in ``tokensIn`` (``tokensOut`` 0) and
the price as its amount.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from x402.schemas import PaymentPayload, PaymentRequired, ResourceInfo, SettleResponse

from agoranet.errors import InvalidRequestError, PaymentRequiredError
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import SCHEME_EXACT, Authorization, PaymentAcceptor

__all__ = ["CALLS_PER_RECEIPT", "MCP_RESOURCE", "Charge", "ToolPayments", "resource_tool"]

MCP_RESOURCE: Final = "mcp://tool/"  # the x402 MCP transport's resource URL of a tool
CALLS_PER_RECEIPT: Final = 1  # a receipt's tokensIn: one call
logger = logging.getLogger(__name__)


def resource_tool(url: str) -> str | None:
    """The tool a resource URL names (``mcp://tool/NAME`` or ``…/tools/NAME``), if any."""
    if url.startswith(MCP_RESOURCE):
        return url[len(MCP_RESOURCE):]
    path = urllib.parse.urlsplit(url).path
    head, _, name = path.rpartition("/")
    return urllib.parse.unquote(name) if head.endswith("/tools") and name else None


@dataclass(frozen=True)
class Charge:
    """A call's payment response, sent before its charge is written (``write()``)."""

    response: dict[str, Any]
    write: Callable[[], Awaitable[None]]


class ToolPayments:
    """Prices, takes, charges and releases the payment of tool calls."""

    def __init__(self, acceptor: PaymentAcceptor) -> None:
        self.acceptor = acceptor
        # (from, nonce) of the exact payments of running calls, by request id
        self._exact_in_use: dict[str, tuple[str, str]] = {}
        self._running: set[str] = set()  # the request ids of running paid calls
        self._lock = asyncio.Lock()

    def payment_required(self, tool: str, description: str, price: int, resource: str,
                         exc: PaymentRequiredError | None = None) -> PaymentRequired:
        """The x402 requirements of one call of ``tool`` at ``price``."""
        required = self.acceptor.payment_required(
            price, None, error=exc.reason if exc else None,
            corrective=exc.corrective if exc else None, resource=resource)
        accepts = [a.model_copy(update={"extra": {**a.extra, "tool": tool}})
                   for a in required.accepts]
        info = ResourceInfo(url=resource, description=description[:500] or f"Tool: {tool}",
                            mime_type="application/json")
        return required.model_copy(update={"accepts": accepts, "resource": info})

    async def authorize(self, header: str | None, tool: str, price: int,
                        request_id: str) -> Authorization:
        """The payment in ``header`` accepted for one call of ``tool`` at ``price``, or a
        PaymentRequiredError; nothing is charged yet."""
        if not header:
            raise PaymentRequiredError(
                f"tool {tool} costs {price} base units for this call: pay with x402 "
                f"({x402wire.PAYMENT_SIGNATURE} header over HTTP, _meta['x402/payment'] over "
                "MCP)", reason="payment_required")
        payment = x402wire.decode_payment_payload(header)
        self._check_target(payment, tool, price)
        key = _exact_key(payment)
        async with self._lock:
            if request_id in self._running:  # the buyer's name for another running call
                raise InvalidRequestError(f"request id {request_id} names a call that is "
                                          "running: one request id names one call",
                                          param="request_id")
            if key is not None and key in self._exact_in_use.values():
                raise PaymentRequiredError(
                    "this exact payment is being used by another call right now: a payment "
                    "pays one call", reason="payment_already_used")
            self._running.add(request_id)
            if key is not None:
                self._exact_in_use[request_id] = key
        try:
            return await self.acceptor.authorize(payment, price, request_id)
        except BaseException:
            self._forget(request_id)
            raise

    def _check_target(self, payment: PaymentPayload, tool: str, price: int) -> None:
        accepted = payment.accepted
        named = (accepted.extra or {}).get("tool")
        if named is not None and named != tool:
            raise PaymentRequiredError(f"this payment is for tool {str(named)[:100]!r}, not "
                                       f"{tool!r}", reason="wrong_resource")
        if payment.resource is not None:
            target = resource_tool(payment.resource.url)
            if target != tool:
                raise PaymentRequiredError(
                    f"this payment is for {payment.resource.url[:200]}, not tool {tool!r}",
                    reason="wrong_resource")
        if accepted.scheme == SCHEME_EXACT and accepted.amount != str(price):
            raise PaymentRequiredError(
                f"an exact payment for {tool} must be of exactly {price} base units, not "
                f"{accepted.amount[:80]}", reason="invalid_exact_evm_payload_amount"
                if accepted.amount.isdigit() and int(accepted.amount) > price
                else "insufficient_amount")

    async def charge(self, auth: Authorization, price: int) -> dict[str, Any]:
        """The tool answered: move an ``exact`` payment on chain, charge a voucher the price;
        the x402 settle response (with the signed receipt in ``extra.receipt``)."""
        try:
            await self.acceptor.settle(auth)  # exact: on chain now; a voucher: later
            _, response = self.acceptor.charge(auth, CALLS_PER_RECEIPT, 0, price)
        finally:
            self._done(auth)
        return _json(response)

    def charge_later(self, auth: Authorization, price: int) -> Charge | None:
        """The tool answered: the settle response (its receipt signed) to send now, and the
        charge of exactly that receipt to write once the answer has gone out
        (:attr:`Charge.write`, off the buyer's path). None if the payment is charged now
        (:meth:`charge`): an ``exact`` one (settled on chain before the answer), or a
        ledger written off the event loop (the buyer could pay its next call on the
        channel while it is still held)."""
        quoted = self.acceptor.quote_before_charge(auth, CALLS_PER_RECEIPT, 0, price)
        if quoted is None:
            return None
        receipt, settle = quoted

        async def write() -> None:
            try:
                self.acceptor.charge(auth, CALLS_PER_RECEIPT, 0, price, quoted=receipt)
            except Exception as exc:  # the answer is out: the seller's loss, the channel freed
                logger.error("charging tool call %s failed after its answer: %s; released, "
                             "nothing charged", auth.request_id, exc)
                self.release(auth)
            finally:
                self._done(auth)

        return Charge(_json(settle), write)

    def release(self, auth: Authorization) -> None:
        """The call failed after its payment was accepted: nothing is charged."""
        try:
            self.acceptor.release(auth)
        finally:
            self._done(auth)

    def _done(self, auth: Authorization) -> None:
        self._forget(auth.request_id)

    def _forget(self, request_id: str) -> None:
        self._running.discard(request_id)
        self._exact_in_use.pop(request_id, None)


def _json(response: SettleResponse) -> dict[str, Any]:
    """The settle response as an answer carries it (x402's JSON names)."""
    return response.model_dump(by_alias=True, exclude_none=True, mode="json")


def _exact_key(payment: PaymentPayload) -> tuple[str, str] | None:
    if payment.accepted.scheme != SCHEME_EXACT:
        return None
    authorization = payment.payload.get("authorization")
    if not isinstance(authorization, dict):
        return None  # the acceptor refuses the malformed payload
    return (str(authorization.get("from", "")).lower(), str(authorization.get("nonce", "")))
