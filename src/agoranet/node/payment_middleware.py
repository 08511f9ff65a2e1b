"""Pure-ASGI x402 enforcement in front of the paid routes, before any inference.

The ASGI layer of :mod:`agoranet.node.paid_inference`, which holds the logic. For a
paid route the middleware reads the body and has the paid-inference service parse,
prepare (tokenise) and price it once; a malformed body, an unknown model or a context
too long is a 400/404 in OpenAI's error JSON, and a request without an acceptable
payment ends in a 402 with the x402 requirements: the engine never runs. With one, the
request goes on to the routes with its parsed and prepared form and its metering in the
scope (:mod:`agoranet.node.metering`, never parsed again) and the paying address under
:data:`PAYER_SCOPE_KEY`. The middleware puts the signed receipt of a plain answer in
``PAYMENT-RESPONSE`` (charged once the answer's body has been handed over, so the
ledger's write is not on the way to the buyer); a stream carries it in a final SSE event
before ``data: [DONE]`` (charged once that frame has been sent, not when the client had
hung up by then), and every ``receipt_every`` content frames a running receipt (object
``agoranet.receipt.running``) for the tokens sent so far, persisted before it goes out.
A request that fails or is abandoned is charged its last running receipt, or nothing if
it got none: the buyer holds a signed receipt for every charge, and a node that dies
mid-stream is paid for what it had receipted. (A final receipt sent just as the client
hung up, or the node died, may never be charged: the node's loss, never the buyer's;
one the buyer never read is in the node's corrective 402.)
Responses are never buffered.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agoranet.api.asgi_body import read_body, replay_body
from agoranet.api.errors import error_body, error_from_exception
from agoranet.errors import PaymentRequiredError
from agoranet.node.embeddings import EmbeddingService
from agoranet.node.metering import METERED_SCOPE_KEY, MeteredRequest, Metering
from agoranet.node.paid_inference import (
    DEFAULT_PAID_PATHS,
    RECEIPT_OBJECT,
    RUNNING_RECEIPT_OBJECT,
    PaidCall,
    PaidInference,
    PriceBook,
    Priced,
)
from agoranet.node.service import InferenceService
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import PaymentAcceptor

__all__ = ["DEFAULT_PAID_PATHS", "PAYER_SCOPE_KEY", "RECEIPT_OBJECT", "RUNNING_RECEIPT_OBJECT",
           "PaymentMiddleware", "PriceBook"]

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
PAYER_SCOPE_KEY = "agoranet.payer"  # the paying address, once its payment is accepted
_PAYMENT_SIGNATURE = x402wire.PAYMENT_SIGNATURE.lower()
_PAYMENT_RESPONSE = x402wire.PAYMENT_RESPONSE.lower().encode()


class PaymentMiddleware:
    """x402 payment before inference for ``paid_paths``; other paths pass through.

    ``embeddings``: the node's embeddings, priced on ``/v1/embeddings`` if that path is
    among ``paid_paths``."""

    def __init__(self, app: ASGIApp, *, acceptor: PaymentAcceptor, service: InferenceService,
                 prices: PriceBook, paid_paths: Iterable[str] = DEFAULT_PAID_PATHS,
                 settle_exact_before: bool = True, receipt_every: int = 16,
                 commitment_price: int = 0, embeddings: EmbeddingService | None = None
                 ) -> None:
        self.app = app
        self.paid = PaidInference(acceptor, service, prices, embeddings=embeddings,
                                  settle_exact_before=settle_exact_before,
                                  receipt_every=receipt_every,
                                  commitment_price=commitment_price)
        self.paid_paths = frozenset(paid_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or \
                scope["path"] not in self.paid_paths:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        headers = _headers(scope)
        try:  # bad body, unknown model, context too long, bad request id: no inference
            admission = await self.paid.admit(scope["path"], body,
                                              headers.get(_PAYMENT_SIGNATURE),
                                              headers.get(REQUEST_ID_HEADER))
        except Exception as exc:
            await _send_error(send, exc)
            return
        replay = replay_body(body, receive)
        if admission.refused is not None:
            await self._send_402(send, admission.refused, admission.priced, scope, headers)
        elif admission.call is None:  # free
            priced = admission.priced
            metered = MeteredRequest(priced.request, priced.prepared, Metering())
            await self.app({**scope, METERED_SCOPE_KEY: metered}, replay, send)
        else:
            await self._serve(scope, replay, send, admission.call)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, call: PaidCall) -> None:
        gone = False  # the client hung up

        async def paid_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response = await call.answered(message["status"])
                if response is not None:
                    encoded = x402wire.encode_json(response)
                    message = {**message, "headers": [
                        *message.get("headers", []), (_PAYMENT_RESPONSE, encoded.encode())]}
            elif call.is_final(message.get("body"), last=message["type"] == "http.response.body"
                               and not message.get("more_body", False)):
                # The final receipt is charged only once what it is for has gone out; an
                # answer cut before that is charged its last running receipt (or nothing:
                # PaidCall.close).
                if gone:
                    return
                await send(message)
                if not gone:
                    await call.final_sent()
                return
            await send(message)

        async def watched_receive() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
            return message

        try:  # the checked signer, for a private adapter's owner
            await self.app({**scope, PAYER_SCOPE_KEY: call.signer,
                            METERED_SCOPE_KEY: call.metered}, watched_receive, paid_send)
        finally:
            await call.close()
        await call.settle_after()

    async def _send_402(self, send: Send, exc: PaymentRequiredError, priced: Priced,
                        scope: Scope, headers: dict[str, str]) -> None:
        host = headers.get("host", "localhost")
        required = self.paid.payment_required(
            priced, exc, f"{scope.get('scheme', 'http')}://{host}{scope['path']}")
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
