"""Failure injection for demos and failover tests: slow streams, connections cut mid-answer.

Pure ASGI middleware around the node's streaming responses. ``delay_ms`` sleeps
before each streamed frame; ``fail_after`` drops the connection after that many
content frames of a stream, in ``fail_every``-th stream (1: every stream). Off
unless a node is started with ``--chaos-*`` options; never enable it in production.
"""

from __future__ import annotations

import asyncio
import itertools

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ChaosMiddleware", "ConnectionCut"]


class ConnectionCut(Exception):
    """Raised inside the response to make the server drop the connection."""


class ChaosMiddleware:
    def __init__(self, app: ASGIApp, *, delay_ms: int = 0, fail_after: int | None = None,
                 fail_every: int = 1) -> None:
        self.app = app
        self.delay = delay_ms / 1000
        self.fail_after = fail_after
        self.fail_every = max(1, fail_every)
        self._streams = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/completions"):
            await self.app(scope, receive, send)
            return
        number = next(self._streams)
        doomed = self.fail_after is not None and number % self.fail_every == 0
        frames = 0
        streaming = False

        async def chaotic_send(message: Message) -> None:
            nonlocal frames, streaming
            if message["type"] == "http.response.start":
                streaming = any(k == b"content-type" and v.startswith(b"text/event-stream")
                                for k, v in message.get("headers", []))
            elif message["type"] == "http.response.body" and streaming and message.get("body"):
                if self.delay:
                    await asyncio.sleep(self.delay)
                frames += 1
                if doomed and self.fail_after is not None and frames > self.fail_after:
                    raise ConnectionCut(f"chaos: cut after {self.fail_after} frames")
            await send(message)

        await self.app(scope, receive, chaotic_send)
