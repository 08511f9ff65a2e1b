"""Pure-ASGI x402 enforcement in front of the OpenAI routes, before any inference.

For a paid route the middleware reads the body, tokenises it once (shared with
the service through :mod:`agoranet.node.metering`) to price its worst case,
and checks the ``PAYMENT-SIGNATURE`` header with the
:class:`~agoranet.payments.acceptor.PaymentAcceptor`. Without an acceptable
payment the request ends in a 402 with the x402 requirements (or a 400 for a
malformed body) and the engine never runs. With one, the voucher is persisted
in the ledger, the request runs, and the actual usage is charged: a plain
response carries the signed receipt in ``PAYMENT-RESPONSE``; a stream carries
it in a final SSE event before ``data: [DONE]``, and every ``receipt_every``
content frames a running receipt (object ``agoranet.receipt.running``) for
the tokens sent so far, persisted before it goes out. A stream's final receipt
is charged only once its frame has been sent (not when the client had hung up
by then). A request that fails or is abandoned is charged its last running
receipt, or nothing if it got none: the buyer holds a signed receipt for every
charge, and a node that dies mid-stream is paid for what it had receipted. (A
final frame written just as the client hung up may never be read: the node's
corrective 402 then carries that receipt.) Responses are never buffered.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agoranet.api.asgi_body import read_body, replay_body
from agoranet.api.errors import error_body, error_from_exception
from agoranet.api.handlers import parse_json_object
from agoranet.api.sse import sse_json
from agoranet.api.types import ChatCompletionRequest, CompletionRequest
from agoranet.engines.base import Finish, Prepared
from agoranet.errors import PaymentRequiredError
from agoranet.market import TokenPrices, cost, with_commitments, worst_case
from agoranet.node.metering import Meter, metered
from agoranet.node.service import InferenceService
from agoranet.payments import x402wire
from agoranet.payments.acceptor import Authorization, PaymentAcceptor
from agoranet.payments.receipts import Receipt

__all__ = ["DEFAULT_PAID_PATHS", "PAYER_SCOPE_KEY", "RECEIPT_OBJECT", "RUNNING_RECEIPT_OBJECT",
           "PaymentMiddleware", "PriceBook"]

logger = logging.getLogger(__name__)

DEFAULT_PAID_PATHS = ("/v1/chat/completions", "/v1/completions")
REQUEST_ID_HEADER = "x-request-id"
PAYER_SCOPE_KEY = "agoranet.payer"  # the paying address, once its payment is accepted
RECEIPT_OBJECT = "agoranet.receipt"  # the final receipt of a stream
RUNNING_RECEIPT_OBJECT = "agoranet.receipt.running"  # for the part already sent
PriceBook = Callable[[str], TokenPrices]


class PaymentMiddleware:
    """x402 payment before inference for ``paid_paths``; other paths pass through."""

    def __init__(self, app: ASGIApp, *, acceptor: PaymentAcceptor, service: InferenceService,
                 prices: PriceBook, paid_paths: Iterable[str] = DEFAULT_PAID_PATHS,
                 settle_exact_before: bool = True, receipt_every: int = 16,
                 commitment_price: int = 0) -> None:
        self.app = app
        self.receipt_every = receipt_every
        self.commitment_price = commitment_price
        self.acceptor = acceptor
        self.service = service
        self.prices = prices
        self.paid_paths = frozenset(paid_paths)
        self.settle_exact_before = settle_exact_before

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or \
                scope["path"] not in self.paid_paths:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        try:
            prepared, model, stream = await self._prepare(scope["path"], body)
        except Exception as exc:  # bad body, unknown model, context too long: no inference
            await _send_error(send, exc)
            return
        prices = self.prices(model)
        if prepared.request.commitments:  # the offer's surcharge on every token
            prices = with_commitments(prices, self.commitment_price)
        if prices.is_free:
            await self.app(scope, replay_body(body, receive), send)
            return
        worst = worst_case(prices, prepared.prompt_tokens, prepared.request.max_tokens)
        headers = _headers(scope)
        request_id = headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        try:
            auth = await self.acceptor.authorize(
                headers.get(x402wire.PAYMENT_SIGNATURE.lower()), worst, request_id)
            if self.settle_exact_before:  # a scheme that settles per payment (exact) does now
                await self.acceptor.settle(auth)
        except PaymentRequiredError as exc:
            await self._send_402(send, exc, worst, prices, scope)
            return
        await self._serve(scope, body, receive, send, auth, prepared, prices, model, stream)

    async def _serve(self, scope: Scope, body: bytes, receive: Receive, send: Send,
                     auth: Authorization, prepared: Prepared, prices: TokenPrices, model: str,
                     stream: bool) -> None:
        meter = Meter(prepared=prepared)

        writer = self.acceptor.writer  # the ledger's writes, off the event loop

        async def charge(finish: Finish) -> dict[str, Any]:
            amount = cost(prices, finish.prompt_tokens, finish.completion_tokens)
            _, response = await writer.unsynced(lambda: self.acceptor.charge(
                auth, finish.prompt_tokens, finish.completion_tokens, amount))
            return response.model_dump(by_alias=True, exclude_none=True, mode="json")

        def receipt_event(kind: str, response: dict[str, Any]) -> bytes:
            return sse_json({"id": f"receipt-{auth.request_id}", "object": kind,
                             "created": int(time.time()), "model": model, "choices": [],
                             "x402_payment_response": response,
                             "agoranet_receipt": response["extra"]["receipt"]})

        # A stream's final receipt, charged once its frame is sent: (usage, receipt, frame).
        final: tuple[Finish, Receipt, bytes] | None = None
        gone = False  # the client hung up

        async def stream_finish(finish: Finish) -> list[bytes]:
            nonlocal final
            amount = cost(prices, finish.prompt_tokens, finish.completion_tokens)
            quoted = self.acceptor.quote(auth, finish.prompt_tokens, finish.completion_tokens,
                                         amount)
            if quoted is None:  # exact: a fixed amount, already paid
                return [receipt_event(RECEIPT_OBJECT, await charge(finish))]
            receipt, response = quoted
            frame = receipt_event(RECEIPT_OBJECT, response.model_dump(
                by_alias=True, exclude_none=True, mode="json"))
            final = (finish, receipt, frame)
            return [frame]

        receipted = 0

        async def stream_progress(sent: int) -> list[bytes]:
            nonlocal receipted
            if sent - receipted < self.receipt_every:
                return []
            receipted = sent
            prompt = prepared.prompt_tokens
            response = await writer.unsynced(lambda: self.acceptor.progress(
                auth, prompt, sent, cost(prices, prompt, sent)))
            return [] if response is None else [receipt_event(RUNNING_RECEIPT_OBJECT, response)]

        meter.stream_finish = stream_finish
        if self.receipt_every > 0:
            meter.stream_progress = stream_progress

        async def paid_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] != 200:
                    await writer.unsynced(lambda: self.acceptor.release(auth))
                elif meter.usage is not None and not stream:
                    encoded = x402wire.encode_json(await charge(meter.usage))
                    message = {**message, "headers": [
                        *message.get("headers", []),
                        (x402wire.PAYMENT_RESPONSE.lower().encode(), encoded.encode())]}
            elif final is not None and not auth.done and message.get("body") == final[2]:
                # The final receipt is charged only once it has gone out; a stream cut
                # before that is charged its last running receipt (in ``finally``).
                if gone:
                    return
                await send(message)
                if not gone:
                    usage, receipt, _ = final
                    await writer.unsynced(lambda: self.acceptor.charge(
                        auth, usage.prompt_tokens, usage.completion_tokens, receipt.amount,
                        quoted=receipt))
                return
            await send(message)

        replay = replay_body(body, receive)

        async def watched_receive() -> Message:
            nonlocal gone
            message = await replay()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        try:
            with metered(meter):  # the checked signer, for a private adapter's owner
                await self.app({**scope, PAYER_SCOPE_KEY: auth.signer}, watched_receive,
                               paid_send)
        finally:
            if not auth.done:
                kept = await writer.unsynced(lambda: self.acceptor.release(auth))
                if kept is not None:
                    logger.info("%s ended early: charged %d for %d tokens by its running "
                                "receipt", auth.request_id, kept.amount, kept.tokens_out)
        if not self.settle_exact_before:  # ... or after the answer
            try:
                await self.acceptor.settle(auth)
            except PaymentRequiredError:
                logger.warning("%s payment for %s failed after the answer", auth.scheme,
                               auth.request_id)

    async def _prepare(self, path: str, body: bytes) -> tuple[Prepared, str, bool]:
        data = parse_json_object(body)
        request: BaseModel
        if path.endswith("/chat/completions"):
            chat = ChatCompletionRequest.model_validate(data)
            request, prepared = chat, await self.service.prepare_chat(chat)
        else:
            completion = CompletionRequest.model_validate(data)
            request, prepared = completion, await self.service.prepare_completion(completion)
        return prepared, str(getattr(request, "model", "")), bool(getattr(request, "stream",
                                                                          False))

    async def _send_402(self, send: Send, exc: PaymentRequiredError, worst: int,
                        prices: TokenPrices, scope: Scope) -> None:
        required = self.acceptor.payment_required(
            worst, prices, error=exc.reason, corrective=exc.corrective,
            resource=f"{scope.get('scheme', 'http')}://{_host(scope)}{scope['path']}")
        body = error_body(exc.message, error_type=exc.error_type, code=exc.reason)
        body["x402"] = required.model_dump(by_alias=True, exclude_none=True, mode="json")
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": exc.status_code, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (x402wire.PAYMENT_REQUIRED.lower().encode(),
             x402wire.encode_model(required).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _host(scope: Scope) -> str:
    return _headers(scope).get("host", "localhost")


async def _send_error(send: Send, exc: Exception) -> None:
    status, body, headers = error_from_exception(exc)
    if status >= 500:
        logger.error("pricing a request failed", exc_info=exc)
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"),
           (b"content-length", str(len(payload)).encode()),
           *((k.lower().encode(), v.encode()) for k, v in headers.items())]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
