"""A node that stalls mid-answer but stays alive: for the gateway's token-deadline tests.

ASGI middleware around a node's streamed completions: after ``after`` content tokens it
forwards nothing more of the answer and instead sends, every ``every_s`` seconds,
what a live but stuck server sends (an SSE keep-alive comment, an event without
choices, a choice with an empty delta), which keeps an HTTP read timeout from ever
firing. It gives up after ``for_s`` seconds by dropping the connection. Enabled only
by the test-only node's ``--chaos-stall-after`` option (:mod:`agoranet.testing.chaos`).
"""

from __future__ import annotations

import json

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agoranet.errors import AgoranetError

__all__ = ["IDLE_FRAMES", "StallMiddleware", "StreamStalled", "content_tokens"]

# What a stalled server may still send: none of it is progress.
IDLE_FRAMES = (b": keep-alive\n\n", b'data: {"choices":[]}\n\n',
               b'data: {"choices":[{"index":0,"delta":{}}]}\n\n')


class StreamStalled(AgoranetError):
    """Raised inside the response once the stall is over: the server drops the connection."""


def content_tokens(frame: bytes) -> int:
    """How many non-empty content deltas the SSE events in ``frame`` carry."""
    count = 0
    for line in frame.split(b"\n"):
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        try:
            event = json.loads(line[5:])
        except ValueError:
            continue
        choices = event.get("choices") if isinstance(event, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and delta.get("content"):
                count += 1
    return count


class StallMiddleware:
    def __init__(self, app: ASGIApp, *, after: int, every_s: float = 0.2,
                 for_s: float = 120.0) -> None:
        self.app = app
        self.after = after
        self.every_s = every_s
        self.for_s = for_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/completions"):
            await self.app(scope, receive, send)
            return
        tokens = 0
        streaming = False

        async def stalling_send(message: Message) -> None:
            nonlocal tokens, streaming
            if message["type"] == "http.response.start":
                streaming = any(k == b"content-type" and v.startswith(b"text/event-stream")
                                for k, v in message.get("headers", []))
            elif message["type"] == "http.response.body" and streaming and message.get("body"):
                tokens += content_tokens(message["body"])
                if tokens > self.after:
                    await self._stall(send)
            await send(message)

        await self.app(scope, receive, stalling_send)

    async def _stall(self, send: Send) -> None:
        """Idle frames until the client goes away (the app's response is cancelled then)
        or ``for_s`` is over."""
        with anyio.move_on_after(self.for_s):
            while True:
                for frame in IDLE_FRAMES:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                    await anyio.sleep(self.every_s)
        raise StreamStalled(f"stalled after {self.after} tokens for {self.for_s:g} s")
