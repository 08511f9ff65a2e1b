"""One paid tool call, the same over HTTP and over MCP.

In order: the tool is looked up (404), its arguments held to the size and depth
limits (413/400) and to its input schema (400), its price computed; only then is a
payment asked for (402 with the requirements) or accepted. The tool runs once its
payment is accepted; its answer is charged the price (a receipt comes back), a tool
that raises is charged nothing and the error says why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from x402.schemas import PaymentRequired

from agoranet.errors import AgoranetError, PaymentRequiredError, ToolFailedError
from agoranet.tools.limits import ArgumentLimits
from agoranet.tools.payments import ToolPayments
from agoranet.tools.request_ids import request_id as checked_request_id
from agoranet.tools.server import ToolServer

__all__ = ["Answer", "CallCounts", "ToolService", "Unpaid"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """A tool's answer: its structured output, and the payment response if it was paid."""

    tool: str
    output: Any  # the structured output (an object)
    price: int
    payment_response: dict[str, Any] | None
    text: str  # the output as text: a string result as it is, else its JSON
    # The charge to write once the answer has gone out (None: charged, or free).
    charge: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Unpaid:
    """No acceptable payment: the 402's reason and requirements (nothing ran)."""

    error: PaymentRequiredError
    required: PaymentRequired


@dataclass
class CallCounts:
    """Calls by outcome, since start (for ``GET /tools`` and tests)."""

    paid: int = 0
    free: int = 0
    unpaid: int = 0
    refused: int = 0
    failed: int = 0


class ToolService:
    """Validates, prices, takes payment for and runs tool calls."""

    def __init__(self, server: ToolServer, payments: ToolPayments | None,
                 limits: ArgumentLimits | None = None) -> None:
        self.server = server
        self.payments = payments
        self.limits = limits or ArgumentLimits()
        self.counts = CallCounts()

    async def call(self, name: str, arguments: dict[str, Any], payment: str | None,
                   resource: str, request_id: object | None = None, *,
                   charge_after: bool = False) -> Answer | Unpaid:
        """Call ``name`` with checked-size ``arguments`` and the payment header value
        ``payment`` (None: unpaid), named ``request_id`` by the buyer (None: named here;
        its receipt carries it). RequestError for a bad call (nothing ran).
        ``charge_after``: the caller writes a voucher's charge (:attr:`Answer.charge`)
        once the answer has gone out, where it can wait (:meth:`ToolPayments.charge_later`)."""
        call_id = checked_request_id(request_id)
        tool = self.server.get(name)
        try:
            valid = tool.validate(arguments)
            price = tool.price_of(valid)
        except AgoranetError:
            self.counts.refused += 1
            raise
        if price == 0 or self.payments is None:
            output = await self._run(tool.name, tool.run, valid)
            self.counts.free += 1
            return Answer(tool.name, tool.structured(output), 0, None, _text(output))
        try:
            auth = await self.payments.authorize(payment, tool.name, price, call_id)
        except PaymentRequiredError as exc:
            self.counts.unpaid += 1
            return Unpaid(exc, self.payments.payment_required(tool.name, tool.description,
                                                              price, resource, exc))
        try:
            output = await self._run(tool.name, tool.run, valid)
            later = self.payments.charge_later(auth, price) if charge_after else None
            response = later.response if later is not None else \
                await self.payments.charge(auth, price)
        except PaymentRequiredError as exc:  # the exact payment failed on chain: no answer
            self.payments.release(auth)
            self.counts.unpaid += 1
            return Unpaid(exc, self.payments.payment_required(tool.name, tool.description,
                                                              price, resource, exc))
        except BaseException:
            self.payments.release(auth)
            raise
        self.counts.paid += 1
        logger.info("tool %s: %s paid %d (%s)", tool.name, auth.payer, price, auth.scheme)
        return Answer(tool.name, tool.structured(output), price, response, _text(output),
                      None if later is None else later.write)

    async def _run(self, name: str, run: Any, arguments: dict[str, Any]) -> Any:
        try:
            return await run(arguments)
        except ToolFailedError:
            self.counts.failed += 1
            raise
        except Exception as exc:  # the seller's function: its failure is said, not charged
            self.counts.failed += 1
            logger.warning("tool %s raised %s: %s", name, type(exc).__name__, exc)
            raise ToolFailedError(f"tool {name} failed: {type(exc).__name__}: {exc}"[:1000]
                                  + "; nothing was charged") from exc


def _text(output: Any) -> str:
    return output if isinstance(output, str) else json.dumps(output)
