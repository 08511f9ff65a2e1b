"""Pure-ASGI request body limits: size (413) and time (408), in OpenAI's error JSON."""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agoranet.api.errors import error_from_exception
from agoranet.errors import PayloadTooLargeError, RequestError, RequestTimeoutError

__all__ = ["BodyLimitMiddleware"]


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` before they are parsed, and bodies that
    stall: each part must arrive within ``body_timeout_s`` of the one before (a client
    that declares a Content-Length and sends less is answered 408, not waited for).

    The refusal is raised from ``receive`` as a :class:`~agoranet.errors.RequestError`,
    so a route that maps errors answers it itself; otherwise it is answered here.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None,
        body_timeout_s: float | None = 30.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_bytes)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, _too_large(limit))
            return
        seen = 0
        started = False
        complete = False

        async def guarded_receive() -> Message:
            nonlocal seen, complete
            if complete or self.body_timeout_s is None:  # e.g. waiting for a disconnect
                return await receive()
            try:  # asyncio.timeout, not wait_for: no task (and loop turn) per receive
                async with asyncio.timeout(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.body_timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except (PayloadTooLargeError, RequestTimeoutError) as exc:
            if not started:
                await _refuse(send, exc)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"request body is larger than the limit of {limit} bytes")


async def _refuse(send: Send, exc: RequestError) -> None:
    status, error, _ = error_from_exception(exc)
    body = json.dumps(error).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if status == 408:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
