"""An SSE response that stops its producer the moment the client goes away."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import anyio
from starlette.types import Receive, Scope, Send

__all__ = ["EventStreamResponse"]


class EventStreamResponse:
    """Streams ``text/event-stream`` frames; on disconnect the iterator is closed at once.

    The producer (an engine stream) is closed in every case, which cancels
    generation: a client that hangs up stops paying for tokens it will not read.
    """

    media_type = "text/event-stream"

    def __init__(
        self, frames: AsyncIterator[bytes], headers: Mapping[str, str] | None = None
    ) -> None:
        self.frames = frames
        self.headers = dict(headers or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *((k.lower().encode(), v.encode()) for k, v in self.headers.items()),
        ]
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
                async for frame in self.frames:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        except OSError:  # the transport broke while sending: same as a disconnect
            pass
        finally:
            await self.frames.aclose()  # type: ignore[attr-defined]
