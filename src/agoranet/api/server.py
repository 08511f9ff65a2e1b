"""Serving a node or gateway app with uvicorn, within limits on what a client may hold.

uvicorn closes a connection that stays idle *after* a response
(``timeout_keep_alive``) but waits forever for the first request on a new
connection and for headers that trickle in, and it accepts any number of
connections. :func:`guarded_protocol` adds what it lacks: a deadline for a
request's headers (from the connection's start, or from the previous response)
and a cap on open connections (one over the cap is closed at once). The body is
bounded in time by :class:`~agoranet.api.limits.BodyLimitMiddleware`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ServerLimits", "guarded_protocol", "serve", "uvicorn_config"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """How long a client may take and how many connections may be open at once."""

    header_timeout_s: float = 10.0  # the request line and headers, all of them
    keep_alive_s: float = 5.0  # idle between requests on one connection (uvicorn's)
    max_connections: int = 1000


def guarded_protocol(limits: ServerLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header deadline and a connection cap."""

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                logger.warning("refusing a connection: %d are open (the limit)",
                               limits.max_connections)
                transport.abort()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:  # the headers are in (or it ended)
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request's headers are due in time too

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no complete request in time: nothing to answer

    return GuardedH11Protocol


def uvicorn_config(app: ASGIApp, host: str, port: int, limits: ServerLimits,
                   **more: Any) -> uvicorn.Config:
    """The uvicorn config that serves ``app`` within ``limits``."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning",
                          timeout_graceful_shutdown=5, http=guarded_protocol(limits),
                          timeout_keep_alive=max(1, round(limits.keep_alive_s)), **more)


def serve(app: ASGIApp, host: str, port: int, limits: ServerLimits) -> None:
    """Run ``app`` until interrupted."""
    uvicorn.Server(uvicorn_config(app, host, port, limits)).run()
