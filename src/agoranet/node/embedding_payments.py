"""The payment middleware, also pricing ``POST /v1/embeddings``.

:class:`~agoranet.node.payment_middleware.PaymentMiddleware` prices a chat or text
completion by preparing it once; this subclass prepares an embeddings request the same
way (:meth:`~agoranet.node.embeddings.EmbeddingService.prepare`: checked and tokenised,
400s before any payment), as a request with ``max_tokens`` 0. Everything else is the
middleware's own path: the worst case (the input tokens at the model's input price)
must be covered by the voucher, which is persisted before the model runs; the usage
the service records is charged and the signed receipt goes back in
``PAYMENT-RESPONSE``; a failed request is charged nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp

from agoranet.api.embeddings import EmbeddingRequest
from agoranet.api.handlers import parse_json_object
from agoranet.engines.base import Prepared
from agoranet.node.embeddings import EmbeddingService
from agoranet.node.payment_middleware import DEFAULT_PAID_PATHS, PaymentMiddleware, PriceBook
from agoranet.node.service import InferenceService
from agoranet.payments.acceptor import PaymentAcceptor

__all__ = ["EMBEDDINGS_PATH", "EmbeddingPaymentMiddleware"]

EMBEDDINGS_PATH = "/v1/embeddings"


class EmbeddingPaymentMiddleware(PaymentMiddleware):
    """x402 payment before inference, for completions and for embeddings."""

    def __init__(self, app: ASGIApp, *, embeddings: EmbeddingService, acceptor: PaymentAcceptor,
                 service: InferenceService, prices: PriceBook,
                 paid_paths: Iterable[str] = (*DEFAULT_PAID_PATHS, EMBEDDINGS_PATH),
                 settle_exact_before: bool = True, receipt_every: int = 16,
                 commitment_price: int = 0) -> None:
        super().__init__(app, acceptor=acceptor, service=service, prices=prices,
                         paid_paths=paid_paths, settle_exact_before=settle_exact_before,
                         receipt_every=receipt_every, commitment_price=commitment_price)
        self.embeddings = embeddings

    async def _prepare(self, path: str, body: bytes) -> tuple[Prepared, str, bool]:
        if path != EMBEDDINGS_PATH:
            return await super()._prepare(path, body)
        request = EmbeddingRequest.model_validate(parse_json_object(body))
        return await self.embeddings.prepare(request), request.model, False
