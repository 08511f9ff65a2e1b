"""An ASGI wrapper that lets a test's client hang up mid-stream at a known point.

A client that reads N content frames and then closes the connection races the node: the
node goes on producing (and records each running receipt before it sends it) until it
sees the hang-up, so on a loaded machine it may charge a later running receipt than the
one the client holds (correct, and covered by ``test_payer_cut_streams.py``, but not a
fixed outcome). A request that says ``x-hang-up-after: N`` is held at its next content
frame after N, until the node's own disconnect handling cancels it: the node then never
produces more than the client read, however slowly the client gets to hang up.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HANG_UP_AFTER", "HangUpGate"]

HANG_UP_AFTER = "x-hang-up-after"
_WAIT_S = 60  # the client hangs up at once; this only bounds a broken test


class HangUpGate:
    """Holds a stream whose client hangs up after ``x-hang-up-after`` content frames."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        after = dict(scope.get("headers", [])).get(HANG_UP_AFTER.encode()) \
            if scope["type"] == "http" else None
        if after is None:
            await self.app(scope, receive, send)
            return
        limit, words = int(after), 0

        async def gated(message: Message) -> None:
            nonlocal words
            body = message.get("body", b"") if message["type"] == "http.response.body" else b""
            word = b'"content":"' in body and b'"content":""' not in body
            if word and words >= limit:
                # cancelled by the node when it sees the client go (a timeout fails the test)
                with anyio.fail_after(_WAIT_S):
                    await anyio.sleep_forever()
            words += word
            await send(message)

        await self.app(scope, receive, gated)
