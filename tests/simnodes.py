"""Simulated nodes for the relay's unit tests: SSE bodies that end, break off or stall."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import httpx

from agoranet.gateway.nodes import NodeState
from agoranet.registry.offer import ModelOffer, Offer, Price

__all__ = ["BODY", "Delayed", "Stalling", "event_stream", "node", "sse", "token"]

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def node(url: str) -> NodeState:
    offer = Offer(engine="sim", models=[ModelOffer(
        id="m", context_length=64, price=Price(input_per_million=1_000_000,
                                               output_per_million=1_000_000))])
    return NodeState(url, offer=offer)


def token(word: str) -> bytes:
    """One content event."""
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": word}}]}).encode() \
        + b"\n\n"


def sse(words: Sequence[str], *, finish: bool = True,
        usage: tuple[int, int] | None = None) -> bytes:
    frames: list[dict[str, object]] = [
        {"choices": [{"index": 0, "delta": {"content": w}}]} for w in words]
    if finish:
        frames.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        frames.append({"choices": [], "usage": {"prompt_tokens": usage[0],
                                                "completion_tokens": usage[1]}})
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    return body + (b"data: [DONE]\n\n" if finish else b"")


class Stalling(httpx.AsyncByteStream):
    """A body that sends ``frames``, then nothing but ``idle`` frames (keep-alive comments,
    empty events) every ``every_s`` seconds, forever: a node that stalls but stays alive.
    ``closed`` is set when the gateway lets go of it."""

    def __init__(self, frames: Sequence[bytes], idle: Sequence[bytes] = (),
                 every_s: float = 0.02) -> None:
        self.frames = list(frames)
        self.idle = list(idle)
        self.every_s = every_s
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for frame in self.frames:
            yield frame
        while True:
            await asyncio.sleep(self.every_s)
            for frame in self.idle:
                yield frame

    async def aclose(self) -> None:
        self.closed.set()


class Delayed(httpx.AsyncByteStream):
    """A body that starts after ``delay_s`` seconds: a node slow to its first token."""

    def __init__(self, body: bytes, delay_s: float) -> None:
        self.body = body
        self.delay_s = delay_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await asyncio.sleep(self.delay_s)
        yield self.body


def event_stream(stream: bytes | httpx.AsyncByteStream) -> httpx.Response:
    headers = {"content-type": "text/event-stream"}
    if isinstance(stream, bytes):
        return httpx.Response(200, content=stream, headers=headers)
    return httpx.Response(200, stream=stream, headers=headers)
