"""A server connection's writes made in one turn of the event loop go out as one.

uvicorn writes a response's status line and headers as soon as the app sends them, then
each part of its body as it comes: a plain JSON answer is two writes, and an event
stream's frames made back to back (an answer's first token after its role, its end: the
finish, the usage, ``[DONE]`` and the chunked terminator) are one write each. Over
loopback or a LAN every write is a packet, and every packet wakes the reader (a client, or
a gateway reading a node) once more. :class:`BatchedWrites` stands between the protocol
and its transport and holds what is written until the current turn of the loop ends
(``call_soon``), then writes it at once: what the app sends without waiting in between
leaves together, and nothing waits longer than the callbacks already due in that turn
(what Node.js's HTTP server does with ``cork`` and an uncork on the next tick).

A response's last body message is written at once (:class:`FlushedAtEnd`, around the
app of each connection): what the app does after its answer (a paid answer's charge, the
request's metrics and log line) is not on the way to the client. Closing, a half-close
(``write_eof``) and more than :data:`FLUSH_AT` bytes held write what is held first; an
abort drops it, as the transport's own buffer is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["FLUSH_AT", "BatchedWrites", "FlushedAtEnd"]

FLUSH_AT: Final = 64 * 1024  # bytes held before they are written without waiting


class BatchedWrites(asyncio.Transport):
    """``transport``, its writes of one loop turn joined into one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write what is held now (a scheduled flush finding nothing held does nothing)."""
        if not self._held:
            return
        held = self._held
        self._held, self._size = [], 0
        if not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held, self._size = [], 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class FlushedAtEnd:
    """``app``, whose responses' last body message ``flush`` writes out at once."""

    def __init__(self, app: ASGIApp, flush: Callable[[], None]) -> None:
        self.app = app
        self.flush = flush

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def flushing_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.flush()

        await self.app(scope, receive, flushing_send)
