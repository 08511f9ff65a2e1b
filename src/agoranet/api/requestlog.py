"""One record per served request, filled by whoever serves it, seen once it has ended.

:class:`RequestObserver` is a pure-ASGI middleware: for each POST to one of its paths it
makes a :class:`RequestRecord` current (a context variable, so the code serving the
request, its streamed body included, can note what it knows: the model, the tokens, the
amount, the request id) and watches the response go out (its status, whether it is an
event stream and when its first bytes went, its end). ``on_start`` sees the record come
in, ``on_message`` each message of its response, and when the request is over, however
it ends, ``on_done`` gets the record (metrics, the request's log line). A failure in
them is logged and never reaches the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestObserver", "RequestRecord", "current_request", "outcome_of"]

logger = logging.getLogger(__name__)

_ERROR_EVENT = b'data: {"error":'  # how a node's or a gateway's stream reports a failure
UNKNOWN = "-"  # a label for what is not known (a request refused before its model was)


@dataclass
class RequestRecord:
    """What is known of one request; amounts in base units, times in milliseconds."""

    path: str
    started: float  # time.perf_counter() when it came in
    request_id: str | None = None
    model: str = UNKNOWN  # set once the model is known to be served (bounded labels)
    nodes: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    amount: int = 0
    failovers: int = 0
    status: int = 0  # the response's status (0: none was sent)
    stream: bool = False
    first_byte_ms: float | None = None  # a stream's first bytes of its body
    latency_ms: float = 0.0
    failed: bool = False  # the app raised (or was cancelled) before the response ended
    stream_error: bool = False  # a stream ended in an error event (its status was 200)
    source: object = None  # what the server keeps of the request (e.g. a relay's result)

    @property
    def outcome(self) -> str:
        return outcome_of(self.status, failed=self.failed, stream_error=self.stream_error)


def outcome_of(status: int, *, failed: bool = False, stream_error: bool = False) -> str:
    """A request's outcome, from a small set (a metrics label): ``ok``,
    ``payment_required`` (402), ``client_error`` (other 4xx), ``error`` (5xx, or a stream
    that ended in an error event) or ``aborted`` (cut before its end)."""
    if failed and status in (0, 200):
        return "aborted"
    if stream_error:
        return "error"
    if 200 <= status < 300:
        return "ok"
    if status == 402:
        return "payment_required"
    if 400 <= status < 500:
        return "client_error"
    return "error"


_CURRENT: ContextVar[RequestRecord | None] = ContextVar("agoranet_request", default=None)


def current_request() -> RequestRecord | None:
    """The record of the request being served here, if one is observed."""
    return _CURRENT.get()


class RequestObserver:
    """Records each POST to ``paths`` and hands the record to ``on_done`` at its end."""

    def __init__(self, app: ASGIApp, *, paths: Iterable[str],
                 on_done: Callable[[RequestRecord], None],
                 on_start: Callable[[RequestRecord], None] | None = None,
                 on_message: Callable[[RequestRecord, Message], None] | None = None) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.on_done = on_done
        self.on_start = on_start
        self.on_message = on_message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or \
                scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        record = RequestRecord(scope["path"], time.perf_counter())
        for name, value in scope.get("headers", []):
            if name.lower() == b"x-request-id":  # the caller's id for it (a gateway's)
                record.request_id = value.decode("latin-1")[:200]
        ended = False

        async def watched(message: Message) -> None:
            nonlocal ended
            if message["type"] == "http.response.start":
                record.status = int(message["status"])
                record.stream = any(k.lower() == b"content-type" and
                                    v.startswith(b"text/event-stream")
                                    for k, v in message.get("headers", []))
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if record.stream and record.first_byte_ms is None and body:
                    record.first_byte_ms = (time.perf_counter() - record.started) * 1000
                if record.stream and body.startswith(_ERROR_EVENT):
                    record.stream_error = True
                ended = not message.get("more_body", False)
            if self.on_message is not None:
                try:
                    self.on_message(record, message)
                except Exception:  # observing must never break serving
                    logger.exception("observing a response failed")
            await send(message)

        if self.on_start is not None:
            self.on_start(record)
        token = _CURRENT.set(record)
        try:
            await self.app(scope, receive, watched)
        finally:
            _CURRENT.reset(token)
            record.failed = not ended
            record.latency_ms = (time.perf_counter() - record.started) * 1000
            try:
                self.on_done(record)
            except Exception:  # observing must never break serving
                logger.exception("recording a request failed")
