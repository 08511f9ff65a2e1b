"""The node's ASGI application, composed from an engine and settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from agoranet.api.limits import BodyLimitMiddleware
from agoranet.config import NodeSettings
from agoranet.engines.base import Engine
from agoranet.node.routes import http_error, routes
from agoranet.node.service import InferenceService
from agoranet.registry.offer import build_offer

__all__ = ["create_app"]


def create_app(engine: Engine, settings: NodeSettings | None = None) -> Starlette:
    """A node serving ``engine``; the engine is closed when the app shuts down."""
    settings = settings or NodeSettings()
    service = InferenceService(engine)
    offer = build_offer(engine.name, engine.models(), settings.price_in, settings.price_out)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await engine.aclose()

    return Starlette(
        routes=routes(service, offer),
        middleware=[Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
