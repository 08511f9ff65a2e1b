"""The tools over plain HTTP: ``GET /tools`` lists them, ``POST /tools/{name}`` calls one.

A call's body is the JSON object of its arguments. Paid like a node's routes (x402 over
HTTP): without a payment, or with one that is refused, the answer is 402 with the
requirements in the ``PAYMENT-REQUIRED`` header (and under ``x402`` in OpenAI's error
JSON); a payment goes in ``PAYMENT-SIGNATURE``; the answer is the tool's structured
output, with the settle response and signed receipt in ``PAYMENT-RESPONSE`` (a
voucher is charged exactly that receipt once the answer has gone out). Bad
arguments are a 400, an unknown tool a 404, a tool that raised a 422 -- none charged.
The buyer's ``x-request-id`` names the call in its receipt (a bad one is a 400).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agoranet.api.errors import error_body, error_from_exception
from agoranet.errors import AgoranetError, PayloadTooLargeError
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import PaymentTerms
from agoranet.tools.request_ids import REQUEST_ID_HEADER
from agoranet.tools.service import Answer, ToolService, Unpaid

__all__ = ["listing", "tool_routes"]

logger = logging.getLogger(__name__)


def listing(service: ToolService, terms: PaymentTerms | None) -> dict[str, Any]:
    """What ``GET /tools`` says: each tool, its schemas and price, and how to pay."""
    data = []
    for tool in service.server:
        fixed = None if callable(tool.price) else tool.price
        data.append({"name": tool.name, "description": tool.description,
                     "input_schema": tool.input_schema, "output_schema": tool.output_schema,
                     "price": fixed, "pricing": "per_call" if fixed is not None
                     else "by_arguments", "max_price": tool.max_price})
    body: dict[str, Any] = {"object": "list", "data": data}
    if terms is not None:
        body["payment"] = {"schemes": list(terms.schemes), "network": terms.network,
                           "asset": terms.asset, "pay_to": terms.pay_to}
    return body


def tool_routes(service: ToolService, terms: PaymentTerms | None) -> list[Route]:
    async def list_tools(request: Request) -> Response:
        return JSONResponse(listing(service, terms))

    async def call_tool(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            body = await _read_body(request, service.limits.max_bytes)
            arguments = service.limits.parse(body)
            outcome = await service.call(name, arguments,
                                         request.headers.get(x402wire.PAYMENT_SIGNATURE),
                                         str(request.url),
                                         request.headers.get(REQUEST_ID_HEADER),
                                         charge_after=True)
        except Exception as exc:  # OpenAI's error JSON; an unexpected one is a plain 500
            if not isinstance(exc, AgoranetError):
                logger.exception("tool call %s failed", name[:100])
            status, error, headers = error_from_exception(exc)
            return JSONResponse(error, status_code=status, headers=headers)
        if isinstance(outcome, Unpaid):
            return _unpaid(outcome)
        return _answer(outcome)

    return [Route("/tools", list_tools, methods=["GET"]),
            Route("/tools/{name}", call_tool, methods=["POST"])]


async def _read_body(request: Request, max_bytes: int) -> bytes:
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > max_bytes:
        raise PayloadTooLargeError(f"the tool's arguments are larger than the limit of "
                                   f"{max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLargeError(f"the tool's arguments are larger than the limit of "
                                       f"{max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _unpaid(outcome: Unpaid) -> Response:
    exc = outcome.error
    body = error_body(exc.message, error_type=exc.error_type, code=exc.reason)
    body["x402"] = outcome.required.model_dump(by_alias=True, exclude_none=True, mode="json")
    return Response(json.dumps(body), status_code=exc.status_code,
                    media_type="application/json",
                    headers={x402wire.PAYMENT_REQUIRED: x402wire.encode_model(outcome.required)})


def _answer(answer: Answer) -> Response:
    headers = {}
    if answer.payment_response is not None:
        headers[x402wire.PAYMENT_RESPONSE] = x402wire.encode_json(answer.payment_response)
    body = json.dumps(answer.output)
    if answer.charge is None:
        return Response(body, media_type="application/json", headers=headers)
    return _ChargedAfter(answer.charge, body, media_type="application/json", headers=headers)


class _ChargedAfter(Response):
    """An answer whose voucher is charged once it has gone out (before the event loop reads
    the buyer's next request), or once sending it failed."""

    def __init__(self, charge: Callable[[], Awaitable[None]], content: str, **kw: Any) -> None:
        super().__init__(content, **kw)
        self._charge = charge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._charge()
