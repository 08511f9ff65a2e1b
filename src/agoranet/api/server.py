"""Serving a node, gateway or tool server with uvicorn, within limits on what a client may hold.

Where they are installed (they are dependencies), httptools parses HTTP and uvloop runs
the event loop: both are C (about half a millisecond less per request through a gateway
to a node, measured with ``bench/gateway.py``); without them, uvicorn's pure-Python h11
and asyncio's loop serve the same. ``http`` (the ``http_protocol`` setting) forces a parser.

uvicorn closes a connection that stays idle *after* a response (``timeout_keep_alive``)
but waits forever for the first request on a new connection and for headers that
trickle in, and it accepts any number of connections; with httptools it also takes
headers of any size. :func:`guarded_protocol` adds what it lacks, written once for both
parsers (:class:`_Guard`): a deadline for a request's headers (from the connection's
start, or from the previous response), a bound on a request's head, whole or in pieces
(``max_header_bytes``, answered 431; h11 alone bounds only a head still incomplete), and
a cap on open connections (one over the cap is closed at once). The body is bounded in
time by :class:`~agoranet.api.limits.BodyLimitMiddleware`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, cast

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from agoranet.api.errors import error_body
from agoranet.api.queued_logging import logging_off_the_loop
from agoranet.config import HttpProtocol
from agoranet.errors import ConfigError

__all__ = ["HttpProtocol", "ServerLimits", "guarded_protocol", "http_parser", "run", "serve",
           "uvicorn_config"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class ServerLimits:
    """How long a client may take, how much it may send before its request's headers end
    and how many connections may be open at once."""

    header_timeout_s: float = 10.0  # the request line and headers, all of them
    keep_alive_s: float = 5.0  # idle between requests on one connection (uvicorn's)
    max_connections: int = 1000
    max_header_bytes: int = 16 * 1024  # the request line and headers (h11's own default)


def _refusal(status: str, message: str, code: str) -> bytes:
    """A whole response, in OpenAI's error JSON, to a request no app sees (the connection
    is closed after it)."""
    body = json.dumps(error_body(message, code=code)).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n")
    return head.encode() + body


_HEAD_TOO_LARGE = _refusal("431 Request Header Fields Too Large",
                    "the request's line and headers are too large", "headers_too_large")
_UNREADABLE = _refusal("400 Bad Request", "the request is not valid HTTP/1.1 (its request "
                       "line or a header is malformed)", "invalid_http_request")


class _Guard(asyncio.Protocol):
    """The limits, for any of uvicorn's HTTP/1.1 protocols: mixed in before it, by a class
    that calls :meth:`_headers_done` once a request's headers are in, :meth:`_arm` after
    a response when the connection waits for the next request, and says whether a
    request's headers are still due (:meth:`_headers_pending`)."""

    limits: ClassVar[ServerLimits]
    # The protocol's own (uvicorn's):
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: set[Any]

    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0  # received while a request's headers are due

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            logger.warning("refusing a connection: %d are open (the limit)",
                           self.limits.max_connections)
            self.transport.abort()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._headers_pending():  # a request's head, up to its blank line, is bounded
            end = data.find(b"\r\n\r\n")
            head = self._header_bytes + (len(data) if end < 0 else end + 4)
            if head > self.limits.max_header_bytes:
                self._disarm()
                self.transport.write(_HEAD_TOO_LARGE)
                self.transport.close()
                return
            self._header_bytes = head if end < 0 else 0
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """The parser could not read the request (uvicorn's answer is plain text): 400 in
        OpenAI's error JSON, and the connection closed."""
        logger.debug("unreadable request: %s", msg)
        self._disarm()
        self.transport.write(_UNREADABLE)
        self.transport.close()

    def _headers_pending(self) -> bool:
        raise NotImplementedError

    def _headers_done(self) -> None:
        self._header_bytes = 0
        self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None  # (disarmed once the headers are in)
        if not self.transport.is_closing():
            self.transport.close()  # no complete request in time: nothing to answer


class _GuardedH11(_Guard, H11Protocol):
    def _headers_pending(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the headers are in (or it ended)
            self._headers_done()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request's headers are due in time too


def _guarded_httptools() -> type[_Guard]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class _GuardedHttpTools(_Guard, HttpToolsProtocol):
        _pending = True  # a request's head is due (from the start, and after each request)

        def _headers_pending(self) -> bool:
            return self._pending

        def on_headers_complete(self) -> None:
            self._pending = False
            self._headers_done()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._pending = True  # what comes next is the next request's head

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.timeout_keep_alive_task is not None:  # idle (not closing, none queued)
                self._arm()  # the next request's headers are due in time too

    return _GuardedHttpTools


def http_parser(http: HttpProtocol = "auto") -> Literal["h11", "httptools"]:
    """The parser ``http`` names: ``auto`` is httptools where it imports, else h11."""
    if http == "h11":
        return "h11"
    try:
        import httptools  # noqa: F401
    except ImportError as exc:
        if http == "httptools":
            raise ConfigError("the httptools parser is not installed: pip install httptools, "
                              "or set the http_protocol setting to h11 (or auto)") from exc
        return "h11"
    return "httptools"


def guarded_protocol(limits: ServerLimits, http: HttpProtocol = "auto") -> type[asyncio.Protocol]:
    """uvicorn's protocol for ``http`` with a header deadline, a header size bound and a
    connection cap."""
    base = _GuardedH11 if http_parser(http) == "h11" else _guarded_httptools()
    return cast(type[asyncio.Protocol], type(base.__name__.lstrip("_"), (base,),
                                             {"limits": limits}))


def uvicorn_config(app: ASGIApp, host: str, port: int, limits: ServerLimits,
                   http: HttpProtocol = "auto", **more: Any) -> uvicorn.Config:
    """The uvicorn config that serves ``app`` within ``limits`` (on uvloop where installed:
    uvicorn's ``loop="auto"``)."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning",
                          timeout_graceful_shutdown=5, http=guarded_protocol(limits, http),
                          h11_max_incomplete_event_size=limits.max_header_bytes,
                          timeout_keep_alive=max(1, round(limits.keep_alive_s)), **more)


def serve(app: ASGIApp, host: str, port: int, limits: ServerLimits,
          http: HttpProtocol = "auto") -> None:
    """Run ``app`` until interrupted, its log lines written off the event loop."""
    with logging_off_the_loop():
        uvicorn.Server(uvicorn_config(app, host, port, limits, http)).run()


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)``, on uvloop's event loop where installed (a server that starts
    uvicorn itself, inside its own coroutine)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
