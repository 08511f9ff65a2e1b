"""``EventStreamResponse``: a client that hangs up while the producer waits for its next
frame closes the producer at once (generation stops) and ends the response quietly; a
cancel from outside (a server shutting down) still goes through; a hang-up after the
answer's end, or a response that ends normally, leaves the task that served it alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agoranet.api.streaming import EventStreamResponse


class Producer:
    """Frames, then a wait for a next one that never comes unless ``more`` is set."""

    def __init__(self, frames: int, more: asyncio.Event | None = None) -> None:
        self.frames = frames
        self.more = more
        self.closed = False
        self.waiting = asyncio.Event()

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            for n in range(self.frames):
                yield f"data: {n}\n\n".encode()
            if self.more is not None:
                self.waiting.set()
                await self.more.wait()
                yield b"data: late\n\n"
        finally:
            self.closed = True


class Client:
    """ASGI receive and send: the request is in; ``leave()`` hangs up."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._gone = asyncio.Event()

    def leave(self) -> None:
        self._gone.set()

    async def receive(self) -> dict[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def _bodies(client: Client) -> list[bytes]:
    return [m.get("body", b"") for m in client.sent if m["type"] == "http.response.body"]


async def test_a_hang_up_while_waiting_for_a_frame_closes_the_producer_at_once() -> None:
    producer, client = Producer(2, more=asyncio.Event()), Client()
    response = EventStreamResponse(producer())
    task = asyncio.create_task(response({"type": "http"}, client.receive, client.send))
    await producer.waiting.wait()
    client.leave()
    await asyncio.wait_for(task, 5)  # ends quietly, not cancelled
    assert producer.closed and not task.cancelled()
    assert _bodies(client) == [b"data: 0\n\n", b"data: 1\n\n"]  # no end: the client left


async def test_a_stream_ends_whole_and_a_later_hang_up_changes_nothing() -> None:
    producer, client = Producer(3), Client()
    await EventStreamResponse(producer())({"type": "http"}, client.receive, client.send)
    client.leave()
    await asyncio.sleep(0.01)  # the watcher, cancelled, is gone; nothing else to cancel
    assert producer.closed
    assert _bodies(client) == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert client.sent[-1]["more_body"] is False
    assert asyncio.current_task() is not None and not asyncio.current_task().cancelling()


async def test_a_cancel_from_outside_goes_through() -> None:
    producer, client = Producer(1, more=asyncio.Event()), Client()
    task = asyncio.create_task(
        EventStreamResponse(producer())({"type": "http"}, client.receive, client.send))
    await producer.waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert producer.closed


async def test_a_hang_up_and_a_cancel_from_outside_together_still_cancel() -> None:
    producer, client = Producer(1, more=asyncio.Event()), Client()
    task = asyncio.create_task(
        EventStreamResponse(producer())({"type": "http"}, client.receive, client.send))
    await producer.waiting.wait()
    client.leave()
    while not task.cancelling():  # the watcher sees the hang-up and cancels the response
        await asyncio.sleep(0)
    task.cancel()  # and the server cancels it too, before it has ended
    with pytest.raises(asyncio.CancelledError):
        await task
    assert producer.closed
