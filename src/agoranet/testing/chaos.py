"""Failure injection for demos and failover tests: slow streams, connections cut mid-answer,
stalled streams.

Each chaos is pure ASGI middleware around a node's completions, registered by name
(:data:`CHAOS`) and made from a spec ``NAME:ARG`` by :func:`chaos_middleware`:

- ``delay:MS``: sleep MS milliseconds before each streamed frame;
- ``cut:N`` or ``cut:N/EVERY``: drop the connection after N content frames of a
  stream, in every EVERY-th stream (default 1: every stream);
- ``stall:N``: after N content tokens, send only what a live but stuck server sends
  (:mod:`agoranet.testing.stall`);
- ``kill-at-receipt:K``: SIGKILL the node's process as a stream's K-th running
  receipt, recorded in its ledger, is about to be sent
  (:mod:`agoranet.testing.receipt_kill`).

A node process gets them from the test-only entry point ``python -m agoranet.testing
node --chaos-delay-ms MS --chaos-fail-after N ...`` (:mod:`agoranet.testing.node`); an
in-process test hands :func:`chaos_middleware` to ``create_app(middleware=...)``. Never
in production.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agoranet.errors import ConfigError
from agoranet.testing.receipt_kill import KillAtReceipt
from agoranet.testing.stall import StallMiddleware

__all__ = ["CHAOS", "ChaosMiddleware", "ConnectionCut", "chaos_middleware"]


class ConnectionCut(Exception):
    """Raised inside the response to make the server drop the connection."""


class ChaosMiddleware:
    """``delay_ms`` sleeps before each streamed frame; ``fail_after`` drops the connection
    after that many content frames of a stream, in every ``fail_every``-th stream."""

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


def _count(name: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"chaos {name}: {text!r} is not a whole number >= {minimum}")
    return value


def _delay(arg: str) -> Middleware:
    return Middleware(ChaosMiddleware, delay_ms=_count("delay", arg, 0))


def _cut(arg: str) -> Middleware:
    after, _, every = arg.partition("/")
    return Middleware(ChaosMiddleware, fail_after=_count("cut", after, 1),
                      fail_every=_count("cut", every or "1", 1))


def _stall(arg: str) -> Middleware:
    return Middleware(StallMiddleware, after=_count("stall", arg, 0))


def _kill_at_receipt(arg: str) -> Middleware:
    return Middleware(KillAtReceipt, at=_count("kill-at-receipt", arg, 1))


CHAOS: dict[str, Callable[[str], Middleware]] = {"cut": _cut, "delay": _delay, "stall": _stall,
                                                 "kill-at-receipt": _kill_at_receipt}
"""Chaos by name: a factory of its middleware from the spec's argument."""


def chaos_middleware(spec: str) -> Middleware:
    """The middleware of chaos ``spec`` (``NAME:ARG``; ConfigError for anything else)."""
    name, _, arg = spec.partition(":")
    factory = CHAOS.get(name)
    if factory is None:
        raise ConfigError(f"unknown chaos {name!r}; known: {', '.join(sorted(CHAOS))}")
    if not arg:
        raise ConfigError(f"chaos {name} needs an argument: {name}:N")
    return factory(arg)
