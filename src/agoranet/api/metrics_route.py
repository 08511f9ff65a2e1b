"""``GET /metrics``: a Prometheus registry in the text exposition format, for the operator.

The route is behind the same :class:`~agoranet.api.secret_gate.SecretGate` as the
dashboards: a scraper sends the operator's (or the gateway owner's) secret as
``Authorization: Bearer``; without it the answer is a 401 in OpenAI's error JSON.
The registry is collected in a worker thread: some collectors read a ledger or a store.
"""

from __future__ import annotations

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agoranet.api.secret_gate import SecretGate

__all__ = ["METRICS_PATH", "metrics_route"]

METRICS_PATH = "/metrics"


def metrics_route(registry: CollectorRegistry, gate: SecretGate) -> Route:
    """``GET /metrics`` over ``registry``, for whoever ``gate`` lets through."""

    async def metrics(request: Request) -> Response:
        if not gate.allows(request):
            return gate.denied()
        body = await anyio.to_thread.run_sync(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Route(METRICS_PATH, metrics, methods=["GET"])
