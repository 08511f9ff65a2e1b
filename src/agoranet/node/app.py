"""The node's ASGI application, composed from an engine and settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from agoranet import __version__
from agoranet.api.limits import BodyLimitMiddleware
from agoranet.api.metrics_route import metrics_route
from agoranet.api.openapi import Operation, openapi_route
from agoranet.api.requestlog import RequestObserver
from agoranet.api.secret_gate import SecretGate, matches
from agoranet.config import NodeSettings
from agoranet.engines.adapters import AdapterHost
from agoranet.engines.base import Engine
from agoranet.market import PriceBook, TokenPrices
from agoranet.node.adapter_access import AdapterAccess, PaidAdapterAccess
from agoranet.node.adapter_owners import AdapterOwners
from agoranet.node.adapter_routes import adapter_routes
from agoranet.node.embeddings import EmbeddingService, embedding_routes
from agoranet.node.finetune_routes import finetune_routes
from agoranet.node.metrics import OBSERVED_PATHS, NodeMetrics
from agoranet.node.routes import http_error, routes
from agoranet.node.service import InferenceService
from agoranet.registry.offer import (
    AdapterTerms,
    FineTuningTerms,
    Offer,
    PaymentOffer,
    Price,
    build_offer,
)
from agoranet.tuning.adapter import pack_adapter
from agoranet.tuning.jobs import FineTuneJob, JobManager

if TYPE_CHECKING:
    from agoranet.node.payment_setup import NodePayments

__all__ = ["create_app"]


def create_app(
    engine: Engine,
    settings: NodeSettings | None = None,
    jobs: JobManager | None = None,
    payments: NodePayments | None = None,
    middleware: Sequence[Middleware] = (),
    operator_secret: str | None = None,
) -> Starlette:
    """A node serving ``engine`` (and selling fine-tuning through ``jobs``, if given).

    With ``payments`` the paid routes take x402 payment before inference, the
    offer is signed with the node's key, and the settlement loop runs. The
    engine, the job manager and the ledger are closed when the app shuts down.
    ``middleware`` wraps the routes inside the body limit and outside payment (the
    seam of :class:`~agoranet.node.hooks.NodeHooks`). ``/metrics`` answers the holder of
    ``operator_secret`` (``Authorization: Bearer``), no one without it.
    """
    settings = settings or NodeSettings()
    service = InferenceService(engine)
    adapters = isinstance(engine, AdapterHost) and engine.accepts_adapters()
    terms = AdapterTerms(
        accepted=adapters,
        surcharge=Price(input_per_million=settings.adapter_surcharge_in,
                        output_per_million=settings.adapter_surcharge_out),
        max_bytes=settings.max_adapter_bytes if adapters else 0,
        # a paid node prices uploads (storage); a free one takes them free
        storage_price_per_mb=settings.price_adapter_storage
        if adapters and payments is not None else None,
    )
    training = FineTuningTerms(
        accepted=jobs is not None,
        price_per_million_training_tokens=jobs.price_per_million if jobs is not None
        else settings.price_training)
    offer = build_offer(engine.name, engine.models(), settings.price_in, settings.price_out,
                        terms, training, commitment_price=settings.price_commitments)
    if payments is not None:
        offer = _paid_offer(offer, payments)
    embeddings = EmbeddingService(engine)
    all_routes = routes(service, offer) + embedding_routes(embeddings)
    owners = None
    if adapters and isinstance(engine, AdapterHost):
        base = engine.models()[0].name
        owners = AdapterOwners(settings.adapter_store() / ".owners.sqlite")
        service.listed_adapters = owners.public
        uploads = None
        if payments is not None and settings.price_adapter_storage > 0:
            from agoranet.node.upload_payments import UploadPayments

            uploads = UploadPayments(payments.acceptor, settings.price_adapter_storage)
        all_routes += adapter_routes(engine, base, settings.max_adapter_bytes, owners, uploads)
        if jobs is not None:
            jobs.on_trained = _serve_trained(engine, owners)
    if jobs is not None:
        job_payments = None
        if payments is not None and jobs.price_per_million > 0:
            from agoranet.node.job_payments import JobPayments

            job_payments = JobPayments(payments.acceptor, jobs.price_per_million)
        jobs.start(job_payments)  # fails the jobs a previous process left unfinished
        all_routes += finetune_routes(jobs, job_payments)
    metrics = NodeMetrics(engine, payments.ledger if payments is not None else None)
    all_routes.append(metrics_route(metrics.registry, SecretGate(
        matches(operator_secret) if operator_secret else _nobody, realm="node operator")))
    all_routes.append(openapi_route(
        title="agoranet node", version=__version__,
        operations={("GET", "/.well-known/agoranet"): Operation("The node's signed offer",
                                                                response=Offer, errors=())},
        paid_paths=settings.paid_paths if payments is not None else ()))

    extra_middleware = middleware
    middleware = [
        Middleware(RequestObserver, paths=OBSERVED_PATHS, on_start=metrics.request_started,
                   on_message=metrics.message, on_done=metrics.request_done),
        Middleware(
            BodyLimitMiddleware,
            max_bytes=settings.max_body_bytes,
            per_path={"/v1/adapters": settings.max_adapter_bytes,
                      "/v1/files": settings.max_training_file_bytes},
            body_timeout_s=settings.body_timeout_s,
        )
    ]
    middleware.extend(extra_middleware)
    if owners is not None:  # private adapters: a 404 for all but their owners
        middleware.append(Middleware(AdapterAccess, owners=owners, paths=settings.paid_paths,
                                     paid=payments is not None))
    loop = None
    if payments is not None:
        from agoranet.node.embedding_payments import EmbeddingPaymentMiddleware
        from agoranet.node.settlement_loop import SettlementLoop
        from agoranet.node.settlement_report import SettlementReport

        middleware.append(Middleware(
            EmbeddingPaymentMiddleware, embeddings=embeddings,
            acceptor=payments.acceptor, service=service,
            prices=_price_book(settings), paid_paths=settings.paid_paths,
            settle_exact_before=payments.settle_exact_before,
            receipt_every=settings.receipt_every, commitment_price=settings.price_commitments,
        ))
        loop = SettlementLoop(payments.settler, payments.settle_interval,
                              SettlementReport(metrics))
        if owners is not None:  # inside the payment: the address it proved
            middleware.append(Middleware(PaidAdapterAccess))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if loop is not None:
            loop.start()
        try:
            yield
        finally:
            if loop is not None:
                await loop.stop()
            if jobs is not None:  # before the ledger: a stopping job is charged in it
                jobs.close()
            if owners is not None:
                owners.close()
            if payments is not None:
                payments.close()
            await engine.aclose()

    app = Starlette(
        routes=all_routes,
        middleware=middleware,
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.payments = payments
    app.state.settlement = loop
    app.state.metrics = metrics
    return app


def _nobody(secret: str) -> bool:
    """No secret is the operator's (a node started without one)."""
    return False


def _price_book(settings: NodeSettings) -> Callable[[str], TokenPrices]:
    book = PriceBook(TokenPrices(settings.price_in, settings.price_out),
                     TokenPrices(settings.adapter_surcharge_in, settings.adapter_surcharge_out))
    return book.prices


def _paid_offer(offer: Offer, payments: NodePayments) -> Offer:
    from agoranet.registry.signing import sign_offer

    terms = payments.acceptor.terms
    payment = PaymentOffer(
        schemes=list(terms.schemes), network=terms.network, asset=terms.asset,
        pay_to=terms.pay_to, receiver_authorizer=terms.receiver_authorizer,
        withdraw_delay=terms.withdraw_delay, min_deposit=terms.min_deposit,
        token_name=terms.token_name, token_version=terms.token_version,
    )
    return sign_offer(offer.model_copy(update={"payment": payment}), payments.account)


def _serve_trained(host: AdapterHost, owners: AdapterOwners) -> Callable[[FineTuneJob], None]:
    """What a finished fine-tuning job does: its adapter joins the node's adapters (the
    same checks as an upload, no size limit: the node made it) and belongs to the job's
    owner, so ``fine_tuned_model`` is served at once."""
    def serve(job: FineTuneJob) -> None:
        assert job.adapter_dir is not None
        adapter = host.add_adapter(pack_adapter(job.adapter_dir), 2**62)
        owners.add(adapter.id, job.owner)
    return serve
