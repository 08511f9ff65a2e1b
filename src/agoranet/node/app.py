"""The node's ASGI application, composed from an engine and settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from agoranet.api.limits import BodyLimitMiddleware
from agoranet.config import NodeSettings
from agoranet.engines.adapters import AdapterHost
from agoranet.engines.base import Engine
from agoranet.node.adapter_routes import adapter_routes
from agoranet.node.finetune_routes import finetune_routes
from agoranet.node.routes import http_error, routes
from agoranet.node.service import InferenceService
from agoranet.registry.offer import AdapterTerms, FineTuningTerms, Price, build_offer
from agoranet.tuning.jobs import JobManager

__all__ = ["create_app"]


def create_app(
    engine: Engine, settings: NodeSettings | None = None, jobs: JobManager | None = None
) -> Starlette:
    """A node serving ``engine`` (and selling fine-tuning through ``jobs``, if given).

    The engine and the job manager are closed when the app shuts down.
    """
    settings = settings or NodeSettings()
    service = InferenceService(engine)
    adapters = isinstance(engine, AdapterHost) and engine.accepts_adapters()
    terms = AdapterTerms(
        accepted=adapters,
        surcharge=Price(input_per_million=settings.adapter_surcharge_in,
                        output_per_million=settings.adapter_surcharge_out),
        max_bytes=settings.max_adapter_bytes if adapters else 0,
    )
    training = FineTuningTerms(accepted=jobs is not None,
                               price_per_million_training_tokens=settings.price_training)
    offer = build_offer(engine.name, engine.models(), settings.price_in, settings.price_out,
                        terms, training)
    all_routes = routes(service, offer)
    if adapters and isinstance(engine, AdapterHost):
        base = engine.models()[0].name
        all_routes += adapter_routes(engine, base, settings.max_adapter_bytes)
    if jobs is not None:
        all_routes += finetune_routes(jobs)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if jobs is not None:
                jobs.close()
            await engine.aclose()

    return Starlette(
        routes=all_routes,
        middleware=[
            Middleware(
                BodyLimitMiddleware,
                max_bytes=settings.max_body_bytes,
                per_path={"/v1/adapters": settings.max_adapter_bytes,
                          "/v1/files": settings.max_training_file_bytes},
            )
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
