"""Paying a tool server over MCP with the official ``mcp`` client (2.x) and x402's client.

x402's own ``x402MCPSession`` was written for ``mcp`` 1.x: it reads ``isError`` and
``structuredContent`` (``is_error`` and ``structured_content`` in 2.x), passes a
``timedelta`` timeout (2.x takes seconds), and never feeds the seller's payment response
back to its x402 client, so a ``batch-settlement`` channel's second voucher is out of
step. :class:`X402McpSession` is that session for ``mcp`` 2.x, over any
``mcp.ClientSession`` and an ``x402.x402Client`` with the schemes registered:

1. the tool is called without payment; an answer is returned as it is (a free tool);
2. a paid tool answers an error result carrying the x402 ``PaymentRequired`` (in its
   structured content, or its first text as JSON: x402's MCP transport); the x402
   client signs a payment for it (its selector and spending controls decide which);
3. the call is made again with the payment in ``_meta["x402/payment"]`` (and the
   buyer's request id in ``_meta["agoranet/request-id"]``, which the receipt names);
4. the seller's settle response (``_meta["x402/payment-response"]``, the signed receipt
   in its ``extra``) is handed to the x402 client (a channel's state follows it) and
   returned with the result.

A payment the seller refuses comes back as another ``PaymentRequired`` result: with
``on_corrective`` (a channel scheme's ``process_corrective_payment_required``) a
corrective one is followed and paid once more; otherwise it is returned, unpaid. An
error that is not a payment request (bad arguments, a tool that raised) is returned
as it is, nothing paid.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from mcp import ClientSession
from mcp_types import CallToolResult, TextContent
from pydantic import ValidationError
from x402 import x402Client
from x402.schemas import PaymentPayload, PaymentRequired, SettleResponse
from x402.schemas.hooks import PaymentResponseContext

from agoranet.errors import PaymentError
from agoranet.tools.request_ids import REQUEST_ID_META

__all__ = ["PAYMENT_META", "PAYMENT_RESPONSE_META", "PaidCall", "X402McpSession",
           "payment_required_of"]

PAYMENT_META: Final = "x402/payment"
PAYMENT_RESPONSE_META: Final = "x402/payment-response"


@dataclass(frozen=True)
class PaidCall:
    """One tool call: the MCP result, and what was paid for it."""

    result: CallToolResult
    paid: bool = False  # a payment was sent with the call that gave ``result``
    payment: PaymentPayload | None = None
    settle: SettleResponse | None = None  # the seller's settle response (receipt in extra)
    required: PaymentRequired | None = None  # the result asks payment (refused or unpaid)

    @property
    def is_error(self) -> bool:
        return bool(self.result.is_error)

    @property
    def receipt(self) -> dict[str, Any] | None:
        """The seller's signed receipt (JSON), if the call was paid and answered."""
        extra = self.settle.extra if self.settle is not None else None
        found = (extra or {}).get("receipt")
        return found if isinstance(found, dict) else None


def payment_required_of(result: CallToolResult) -> PaymentRequired | None:
    """The x402 ``PaymentRequired`` an error result carries (x402's MCP transport), if any."""
    if not result.is_error:
        return None
    candidates: list[Any] = []
    if isinstance(result.structured_content, dict):
        candidates.append(result.structured_content)
    for item in result.content:
        if isinstance(item, TextContent):
            try:
                candidates.append(json.loads(item.text))
            except ValueError:
                continue
    for candidate in candidates:
        if isinstance(candidate, dict) and "accepts" in candidate:
            try:
                return PaymentRequired.model_validate(candidate)
            except ValidationError:
                continue
    return None


class X402McpSession:
    """Calls tools over ``session``, paying those that ask with ``client``."""

    def __init__(self, session: ClientSession, client: x402Client, *,
                 on_corrective: Callable[[PaymentRequired], bool] | None = None) -> None:
        self.session = session
        self.client = client
        self.on_corrective = on_corrective

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None, *,
                        request_id: str | None = None,
                        read_timeout_seconds: float | None = None) -> PaidCall:
        """Call ``name``, paying it if it asks (see the module's docstring)."""
        arguments = arguments or {}
        meta: dict[str, Any] = {REQUEST_ID_META: request_id} if request_id else {}
        result = await self._call(name, arguments, read_timeout_seconds, meta or None)
        required = payment_required_of(result)
        if required is None:
            return PaidCall(result)
        corrected = False
        while True:
            payment = await self.client.create_payment_payload(required)
            if not isinstance(payment, PaymentPayload):
                raise PaymentError("x402 MCP needs an x402 version 2 payment")
            paid = await self._call(name, arguments, read_timeout_seconds, {
                **meta, PAYMENT_META: payment.model_dump(by_alias=True, exclude_none=True,
                                                         mode="json")})
            refused = payment_required_of(paid)
            if refused is None:
                settle = await self._settled(paid, payment)
                return PaidCall(paid, True, payment, settle)
            if corrected or self.on_corrective is None or not self.on_corrective(refused):
                return PaidCall(paid, True, payment, required=refused)
            corrected, required = True, refused

    async def _call(self, name: str, arguments: dict[str, Any], timeout: float | None,
                    meta: dict[str, Any] | None) -> CallToolResult:
        result = await self.session.call_tool(name, arguments, timeout,
                                              meta=meta)  # type: ignore[arg-type]
        if not isinstance(result, CallToolResult):
            raise PaymentError(f"the tool server answered {name} with a "
                               f"{type(result).__name__}, not a tool result")
        return result

    async def _settled(self, result: CallToolResult,
                       payment: PaymentPayload) -> SettleResponse | None:
        """The settle response in ``result``, handed to the x402 client (its channel state
        follows the seller's receipt)."""
        raw = (result.meta or {}).get(PAYMENT_RESPONSE_META)
        if raw is None:
            return None
        try:
            settle = SettleResponse.model_validate(raw)
        except ValidationError as exc:
            raise PaymentError(f"the tool server's payment response is not an x402 settle "
                               f"response ({exc.error_count()} error(s))") from None
        await self.client.handle_payment_response(PaymentResponseContext(
            payment_payload=payment, requirements=payment.accepted, settle_response=settle))
        return settle
