"""The gateway buys tools: listed by name and schema, paid under the caller's budget.

:meth:`ToolMarket.listing` groups the checked offers of the
:class:`~agoranet.gateway.tool_directory.ToolDirectory` into tools: one per name and
schema hash (the same tool, whoever sells it), each with its sellers, cheapest first.

:meth:`ToolMarket.call` buys one call. For each seller of the tool in turn (cheapest,
then best reputation; banned sellers skipped):

1. the price is known: the tool's fixed price, or for a price that varies with the
   arguments the seller's quote (its 402 to an unpaid call, never above its stated
   bound);
2. it is reserved from the caller's budget (its key's chain, then the gateway's): a
   call over budget is refused (402 ``budget_exceeded``) before any payment;
3. the seller is paid over one of its batch-settlement channels, held for the call
   (:class:`~agoranet.gateway.tool_payer.ToolPayers`: calls at once to one seller use
   several; the voucher saved before it leaves), or, if it takes only
   ``exact``, with one transfer from the gateway's wallet (:mod:`.tool_exact`), and its
   signed receipt checked (its payee's signature, this call, exactly the price);
4. the reservation is settled at what the receipt says, and the spend log gets a row
   (model ``tool:NAME``, node: the seller's root URL, the key, the receipt).

A seller that fails before a result (no answer, an error, a refused receipt) is
recorded as a failure in the reputation store and the next seller of the same tool is
tried; one that charged for a call it did not answer (an error carrying a receipt, or
a receipt the payer refuses) is recorded as a receipt disagreement, which weighs
twenty failures, and what it can claim is counted as spent. Bad arguments (the
seller's 400) are the buyer's mistake: passed back at once, held against no one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from x402.mechanisms.evm.batch_settlement import errors as bs_errors

from agoranet.api import jsonlimits
from agoranet.errors import (
    AgoranetError,
    InvalidJSONError,
    InvalidRequestError,
    ModelNotFoundError,
    PaymentError,
    ReceiptError,
    UpstreamError,
)
from agoranet.gateway.budget import Budget, Reserver
from agoranet.gateway.reputation import EventKind, Reputation
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.gateway.tool_directory import ToolDirectory, ToolSeller
from agoranet.gateway.tool_exact import ExactBuyer, exact_only
from agoranet.gateway.tool_limits import ToolLimits
from agoranet.gateway.tool_outcome import (
    MAX_RESULT_BYTES,
    CallOutcome,
    error_text,
    result_of,
    unpaid_outcome,
)
from agoranet.gateway.tool_payer import ToolPayer, ToolPayers
from agoranet.payments import x402wire
from agoranet.payments.pay.httpx_auth import BUSY_RETRIES_S
from agoranet.payments.pay.payer import PendingPayment
from agoranet.registry.tool_offer import OfferedTool

__all__ = ["MAX_RESULT_BYTES", "CallOutcome", "ToolListing", "ToolMarket"]

logger = logging.getLogger(__name__)

_CALL_TIMEOUT: Final = httpx.Timeout(120.0, connect=5.0)
# A seller's refusals about the channel's on-chain state: checked on chain, paid again.
_CHANNEL_STATE_ERRORS: Final = frozenset({
    bs_errors.ERR_CHANNEL_NOT_FOUND, bs_errors.ERR_CUMULATIVE_EXCEEDS_BALANCE,
    "invalid_batch_settlement_evm_channel_withdrawing"})


@dataclass
class ToolListing:
    """One tool (a name and a schema hash) and who sells it, cheapest first."""

    name: str
    schema_sha256: str
    tool: OfferedTool  # the cheapest seller's description and schemas
    sellers: list[tuple[ToolSeller, OfferedTool]] = field(default_factory=list)

    def view(self, scores: dict[str, float]) -> dict[str, Any]:
        return {"name": self.name, "schema_sha256": self.schema_sha256,
                "description": self.tool.description, "input_schema": self.tool.input_schema,
                "output_schema": self.tool.output_schema,
                "price": self.tool.price.model_dump(exclude_none=True),
                "sellers": [{"url": s.root, "seller": s.identity,
                             "price": t.price.model_dump(exclude_none=True),
                             "schemes": s.offer.payment.schemes if s.offer and s.offer.payment
                             else [], "score": round(scores.get(s.identity, 0.5), 4)}
                            for s, t in self.sellers]}


class ToolMarket:
    """Lists and buys tools (see the module's docstring)."""

    def __init__(self, directory: ToolDirectory, client: httpx.AsyncClient, budget: Budget,
                 spend: SpendLog, payers: ToolPayers | None = None,
                 reputation: Reputation | None = None) -> None:
        self.directory = directory
        self.client = client
        self.budget = budget
        self.spend = spend
        self.payers = payers
        self.reputation = reputation
        self.exact = ExactBuyer(payers.account, payers.stablecoin, self._post,
                                payers.cancel_exact) if payers is not None else None

    # ------------------------------------------------------------ listing

    def _score(self, seller: ToolSeller) -> float:
        return self.reputation.score(seller.identity) if self.reputation else 0.5

    def _banned(self, seller: ToolSeller) -> bool:
        return self.reputation is not None and \
            self.reputation.ban(seller.identity, seller.root) is not None

    def listing(self) -> list[ToolListing]:
        """Every tool on offer from a seller whose offer was accepted and who is not banned,
        grouped by name and schema hash; sellers cheapest first, then best score."""
        groups: dict[tuple[str, str], ToolListing] = {}
        for seller in self.directory.sellers.values():
            if seller.offer is None or self._banned(seller):
                continue
            for tool in seller.offer.tools:
                key = (tool.name, tool.schema_sha256)
                group = groups.setdefault(key, ToolListing(tool.name, tool.schema_sha256, tool))
                group.sellers.append((seller, tool))
        for group in groups.values():
            group.sellers.sort(key=lambda st: (_rank_price(st[1]), -self._score(st[0]),
                                               st[0].root))
            group.tool = group.sellers[0][1]
        return sorted(groups.values(), key=lambda g: (g.name, -len(g.sellers),
                                                       _rank_price(g.tool)))

    def view(self, limits: ToolLimits | None = None) -> list[dict[str, Any]]:
        """``GET /agoranet/tools``: each tool with its sellers and prices (with a key's
        ``limits``: only the tools and sellers it may buy)."""
        listed = self.listing()
        if limits is not None:
            listed = [g for g in (_within(g, limits) for g in listed) if g is not None]
        scores = {s.identity: self._score(s) for g in listed for s, _ in g.sellers}
        return [g.view(scores) for g in listed]

    def find(self, name: str, schema_sha256: str | None = None) -> ToolListing:
        """The tool ``name`` (with that schema hash if given; else the one most sellers
        sell), or a 404."""
        matches = [g for g in self.listing() if g.name == name and
                   (schema_sha256 is None or g.schema_sha256 == schema_sha256)]
        if not matches:
            raise ModelNotFoundError(f"no seller on the network offers the tool '{name}'"
                                     + (f" with schema {schema_sha256[:12]}…"
                                        if schema_sha256 else ""), param="name")
        return matches[0]

    # ------------------------------------------------------------ buying

    async def call(self, name: str, arguments: dict[str, Any], reserver: Reserver | None = None,
                   *, key: str | None = None, schema_sha256: str | None = None,
                   request_id: str | None = None,
                   limits: ToolLimits | None = None) -> dict[str, Any]:
        """Buy one call of ``name`` with ``arguments``, reserving from ``reserver`` (the
        gateway's budget if None), within the calling key's ``limits`` (a 403 before
        anything is reserved for a tool, seller or price they rule out); the result, who
        sold it, what it cost."""
        limits = limits or ToolLimits()
        limits.check_tool(name)
        listing = self.find(name, schema_sha256)
        sellers = limits.usable(name, listing.sellers)
        request_id = request_id or f"toolcall-{uuid.uuid4().hex}"
        reserver = limits.reserver(reserver or self.budget)
        tried: list[dict[str, Any]] = []
        for seller, tool in sellers:
            if seller.offer is None or seller.offer.tool(name) != tool:
                continue  # its offer changed or was refused since the listing
            started = time.monotonic()
            outcome = await self._buy(seller, tool, arguments, reserver, request_id)
            elapsed = (time.monotonic() - started) * 1000
            if outcome.buyer_error is not None:
                raise outcome.buyer_error
            if outcome.blameless:
                logger.info("tool %s at %s not bought: %s", name, seller.root, outcome.error)
                tried.append({"seller": seller.root, "error": outcome.error, "charged": 0})
                continue
            if outcome.amount or outcome.answered or outcome.error:
                self.spend.add(SpendRow(
                    request_id, f"tool:{name}", seller.root, 0, 0, outcome.amount, None,
                    elapsed, "ok" if outcome.answered else "failed", outcome.receipt, key=key))
            if outcome.answered:
                self._record(seller, EventKind.SUCCESS, name, "")
                return {"object": "agoranet.tool_call", "id": request_id, "tool": name,
                        "schema_sha256": listing.schema_sha256, "seller": seller.root,
                        "seller_address": seller.identity, "result": outcome.result,
                        "cost": outcome.amount,
                        "receipt": json.loads(outcome.receipt) if outcome.receipt else None,
                        "tried": tried}
            kind = EventKind.RECEIPT if outcome.charged_failure else EventKind.FAILURE
            self._record(seller, kind, name, outcome.error or "failed")
            logger.warning("tool %s at %s failed: %s", name, seller.root, outcome.error)
            tried.append({"seller": seller.root, "error": outcome.error,
                          "charged": outcome.amount})
        reasons = "; ".join(f"{t['seller']}: {t['error']}" for t in tried) or "no seller"
        raise UpstreamError(f"every seller of the tool '{name}' failed ({reasons})")

    def _record(self, seller: ToolSeller, kind: EventKind, tool: str, detail: str) -> None:
        seller.events.append(f"{kind}: {detail}" if detail else str(kind))
        del seller.events[:-20]
        if self.reputation is not None:
            self.reputation.add(seller.identity, seller.root, kind, model=f"tool:{tool}",
                                detail=detail[:500])

    async def _buy(self, seller: ToolSeller, tool: OfferedTool, arguments: dict[str, Any],
                   reserver: Reserver, request_id: str) -> CallOutcome:
        """One seller's attempt: price, reserve, pay, call, check."""
        url = f"{seller.root}/tools/{tool.name}"
        if tool.price.free:
            return await self._free(url, arguments)
        if self.payers is None or self.exact is None:
            return CallOutcome(error="the gateway has no wallet to pay tools with "
                                     "(start it with --rpc-url and a keystore)",
                               blameless=True)
        if exact_only(seller):  # one transfer a call, from the wallet's account
            return await self.exact.buy(seller, tool, url, arguments, reserver, request_id)
        price = tool.price.amount
        if price is None:  # varies: the seller quotes these arguments first
            quoted = await self._quote(url, arguments, tool)
            if isinstance(quoted, CallOutcome):
                return quoted
            price = quoted
        reservation = await reserver.reserve(price)  # over budget: refused, nothing paid
        outcome = CallOutcome()
        try:
            try:  # a channel of its own for this call (calls at once: several channels)
                payer = await self.payers.take(seller)
            except AgoranetError as exc:  # its channel could not be opened
                return CallOutcome(error=f"cannot pay this seller: {exc}", blameless=True)
            try:
                outcome = await self._paid(payer, url, arguments, price, request_id)
            finally:
                self.payers.give_back(seller, payer)
        finally:
            reservation.release(outcome.amount)
        return outcome

    async def _free(self, url: str, arguments: dict[str, Any]) -> CallOutcome:
        try:
            response = await self._post(url, arguments)
        except httpx.HTTPError as exc:
            return CallOutcome(error=f"no answer ({type(exc).__name__})")
        return unpaid_outcome(response)

    async def _quote(self, url: str, arguments: dict[str, Any],
                     tool: OfferedTool) -> int | CallOutcome:
        """The seller's price for these arguments, from its 402 to an unpaid call."""
        try:
            response = await self._post(url, arguments)
        except httpx.HTTPError as exc:
            return CallOutcome(error=f"no answer ({type(exc).__name__})")
        if response.status_code != 402:
            return unpaid_outcome(response)
        try:
            required = x402wire.decode_payment_required(
                response.headers.get(x402wire.PAYMENT_REQUIRED, ""))
            accept = next(a for a in required.accepts if a.scheme == "batch-settlement")
            quoted = int(accept.amount)
        except (PaymentError, StopIteration, ValueError):
            return CallOutcome(error="its 402 carries no batch-settlement price")
        if not tool.price.allows(quoted):
            return CallOutcome(error=f"it quotes {quoted}, above the most its offer "
                                     f"states ({tool.price.max_amount})")
        return quoted

    async def _paid(self, payer: ToolPayer, url: str, arguments: dict[str, Any], price: int,
                    request_id: str) -> CallOutcome:
        """Pay ``price`` for the call and check the receipt (``payer``'s channel ours). A
        seller still holding the channel for an earlier call of ours (one we stopped
        waiting for) is asked again after short pauses, as a node is; then this call is
        not its failure."""
        retried = False
        pauses = iter(BUSY_RETRIES_S)
        while True:
            try:
                pending = payer.pay(price, request_id)
            except PaymentError as exc:  # no deposit left, or a channel in dispute
                return CallOutcome(error=f"cannot pay: {exc}", blameless=True)
            try:
                response = await self._post(url, arguments, {
                    x402wire.PAYMENT_SIGNATURE: pending.header, "x-request-id": request_id})
            except httpx.HTTPError as exc:
                return CallOutcome(error=f"no answer after payment ({type(exc).__name__})")
            if response.status_code == 402 and _busy(response):
                pause = next(pauses, None)
                if pause is None:
                    return CallOutcome(error="its channel is still busy with an earlier call "
                                             "of ours", blameless=True)
                await asyncio.sleep(pause)
                continue
            if response.status_code == 402 and not retried:
                retried = True
                if self._repaired(payer, response):
                    continue
            return _settled(payer, pending, response, price)

    async def _post(self, url: str, arguments: dict[str, Any],
                    headers: dict[str, str] | None = None) -> httpx.Response:
        """POST the arguments; the answer read into memory up to :data:`MAX_RESULT_BYTES`
        (a larger one is kept without its body: status and headers, a receipt among them,
        still count)."""
        async with self.client.stream(
                "POST", url, content=json.dumps(arguments).encode(), timeout=_CALL_TIMEOUT,
                headers={"content-type": "application/json", **(headers or {})}) as response:
            try:
                body = await jsonlimits.read_limited(response, MAX_RESULT_BYTES,
                                                     what="the tool's answer")
            except InvalidJSONError:
                body = b""
        return httpx.Response(response.status_code, headers=response.headers, content=body,
                              request=response.request)

    def _repaired(self, payer: ToolPayer, response: httpx.Response) -> bool:
        """Whether a 402 to our voucher was about the channel and has been dealt with (the
        chain checked, or the seller's charged total followed), so paying again may work."""
        try:
            required = x402wire.decode_payment_required(
                response.headers.get(x402wire.PAYMENT_REQUIRED, ""))
        except PaymentError:
            return False
        accept = next((a for a in required.accepts if a.scheme == "batch-settlement"), None)
        if accept is None:
            return False
        if required.error in _CHANNEL_STATE_ERRORS:
            return payer.reconcile() is not None
        if required.error and "mismatch" in required.error:
            try:
                return payer.resync(accept.extra or {})
            except PaymentError:
                return False
        return False


def _within(listing: ToolListing, limits: ToolLimits) -> ToolListing | None:
    """``listing`` with only the sellers ``limits`` allow (None: none, or a tool they rule
    out)."""
    if not limits.allows_tool(listing.name):
        return None
    sellers = [(s, t) for s, t in listing.sellers if limits.allows_seller(s) and
               (t.price.amount is None or limits.allows_price(t.price.amount))]
    if not sellers:
        return None
    return ToolListing(listing.name, listing.schema_sha256, sellers[0][1], sellers)


def _busy(response: httpx.Response) -> bool:
    """A 402 because the seller still holds the channel for an earlier call of ours."""
    try:
        required = x402wire.decode_payment_required(
            response.headers.get(x402wire.PAYMENT_REQUIRED, ""))
    except PaymentError:
        return False
    return required.error == bs_errors.ERR_CHANNEL_BUSY


def _rank_price(tool: OfferedTool) -> tuple[int, int]:
    """Fixed prices by amount; a varying one after them by its bound (unbounded last)."""
    price = tool.price
    if price.amount is not None:
        return (0, price.amount)
    return (1, price.max_amount if price.max_amount is not None else 2**256)


def _settled(payer: ToolPayer, pending: PendingPayment, response: httpx.Response,
             price: int) -> CallOutcome:
    """The outcome of a paid call: its receipt checked and adopted (a refused receipt
    counts the whole voucher as spent: the seller can claim it)."""
    header = response.headers.get(x402wire.PAYMENT_RESPONSE)
    if header is None:
        if response.status_code == 400:
            return CallOutcome(buyer_error=InvalidRequestError(
                f"the tool refused the arguments: {error_text(response)}", param="arguments"))
        if response.status_code == 200:
            return CallOutcome(error="it answered a paid call without a receipt",
                               charged_failure=True, amount=pending.max_amount)
        return CallOutcome(error=error_text(response))
    try:
        settle = x402wire.decode_json(header, x402wire.PAYMENT_RESPONSE)
        receipt = payer.check_call(pending, settle, price)
    except (PaymentError, ValueError) as exc:
        reason = exc if isinstance(exc, ReceiptError) else f"bad payment response: {exc}"
        return CallOutcome(error=f"receipt refused: {reason}", charged_failure=True,
                           amount=pending.max_amount)
    payer.adopt(pending, receipt)
    receipt_json = json.dumps(receipt.to_json())
    ok, result = result_of(response)
    if response.status_code == 200 and ok:
        return CallOutcome(result=result, answered=True, amount=receipt.amount,
                           receipt=receipt_json)
    why = error_text(response) if response.status_code != 200 else "its answer is not JSON"
    return CallOutcome(error=f"charged {receipt.amount} and failed ({why})",
                       charged_failure=True, amount=receipt.amount, receipt=receipt_json)
