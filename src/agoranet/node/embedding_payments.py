"""The payment middleware, also pricing ``POST /v1/embeddings``.

:class:`~agoranet.node.payment_middleware.PaymentMiddleware` with the node's
:class:`~agoranet.node.embeddings.EmbeddingService`: the paid-inference service
(:mod:`agoranet.node.paid_inference`) prepares an embeddings request once
(:meth:`~agoranet.node.embeddings.EmbeddingService.prepare`: checked and tokenised, 400s
before any payment), as a request with ``max_tokens`` 0. Everything else is the paid
path of every route: the worst case (the input tokens at the model's input price) must
be covered by the voucher, which is persisted before the model runs; the usage the
service records is charged and the signed receipt goes back in ``PAYMENT-RESPONSE``; a
failed request is charged nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp

from agoranet.node.embeddings import EmbeddingService
from agoranet.node.paid_inference import DEFAULT_PAID_PATHS, EMBEDDINGS_PATH, PriceBook
from agoranet.node.payment_middleware import PaymentMiddleware
from agoranet.node.service import InferenceService
from agoranet.payments.accept.acceptor import PaymentAcceptor

__all__ = ["EMBEDDINGS_PATH", "EmbeddingPaymentMiddleware"]


class EmbeddingPaymentMiddleware(PaymentMiddleware):
    """x402 payment before inference, for completions and for embeddings."""

    def __init__(self, app: ASGIApp, *, embeddings: EmbeddingService, acceptor: PaymentAcceptor,
                 service: InferenceService, prices: PriceBook,
                 paid_paths: Iterable[str] = (*DEFAULT_PAID_PATHS, EMBEDDINGS_PATH),
                 settle_exact_before: bool = True, receipt_every: int = 16,
                 commitment_price: int = 0) -> None:
        super().__init__(app, acceptor=acceptor, service=service, prices=prices,
                         paid_paths=paid_paths, settle_exact_before=settle_exact_before,
                         receipt_every=receipt_every, commitment_price=commitment_price,
                         embeddings=embeddings)
