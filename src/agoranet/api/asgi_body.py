"""A request body read whole inside ASGI middleware, and handed on to the app again.

The size of the body is bounded before it gets here (:mod:`agoranet.api.limits` wraps
the whole app), so reading it whole is safe.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import Message, Receive

__all__ = ["read_body", "replay_body"]


async def read_body(receive: Receive) -> bytes:
    """The whole body (what arrived before a disconnect, if the client hung up)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A ``receive`` that gives ``body`` once, then passes on what ``receive`` gives."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
