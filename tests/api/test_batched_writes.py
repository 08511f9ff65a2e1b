"""A server connection's writes of one loop turn leave as one (``agoranet.api.batched_writes``).

On a recording transport: writes of one turn are joined, writes of two turns are not,
closing and half-closing write what is held first, an abort drops it, a large amount is
written at once, and nothing is written to a transport already closing. On a real
uvicorn server of ``agoranet.api.server`` (both parsers) and a raw socket: a JSON answer
is one write, headers and body; an event stream's frames made back to back are one
write, and frames with a wait between them are not held for each other; an answer is
written out before the work the app does after it (a paid answer's charge) begins.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agoranet.api import server as server_module
from agoranet.api.batched_writes import FLUSH_AT, BatchedWrites
from agoranet.api.server import HttpProtocol, ServerLimits, uvicorn_config
from helpers import served_on_a_thread

WAIT = 10.0


class Recording(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof = False

    def write(self, data: Any) -> None:
        assert not self.closed, "a write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


async def _next_turn() -> None:
    """Let the loop run the callbacks due now (a scheduled flush among them)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writes_of_one_turn_leave_together_and_of_two_turns_apart() -> None:
    async def go() -> list[bytes]:
        raw = Recording()
        batched = BatchedWrites(raw, asyncio.get_running_loop())
        batched.write(b"head ")
        batched.writelines([b"body", b""])
        assert raw.writes == [] and batched.get_write_buffer_size() == 9
        await _next_turn()
        batched.write(b"next")
        await _next_turn()
        return raw.writes

    assert asyncio.run(go()) == [b"head body", b"next"]


def test_close_and_half_close_write_what_is_held_first_and_abort_drops_it() -> None:
    async def go() -> tuple[Recording, Recording, Recording]:
        loop = asyncio.get_running_loop()
        closing, half, aborting = Recording(), Recording(), Recording()
        for raw in (closing, half, aborting):
            BatchedWrites(raw, loop).write(b"held")
        first = BatchedWrites(closing, loop)
        first.write(b"last words")
        first.close()
        second = BatchedWrites(half, loop)
        second.write(b"before eof")
        second.write_eof()
        third = BatchedWrites(aborting, loop)
        third.write(b"never")
        third.abort()
        await _next_turn()  # the flushes scheduled find nothing held, or a closed transport
        return closing, half, aborting

    closing, half, aborting = asyncio.run(go())
    assert closing.writes[-1] == b"last words" and closing.closed
    assert b"before eof" in half.writes and half.eof
    assert b"never" not in aborting.writes and aborting.aborted


def test_a_large_amount_is_written_without_waiting_for_the_turn() -> None:
    async def go() -> None:
        raw = Recording()
        batched = BatchedWrites(raw, asyncio.get_running_loop())
        batched.write(b"a")
        batched.write(b"b" * FLUSH_AT)
        assert raw.writes == [b"a" + b"b" * FLUSH_AT]
        await _next_turn()
        assert len(raw.writes) == 1

    asyncio.run(go())


def test_nothing_is_written_to_a_transport_already_closing() -> None:
    async def go() -> list[bytes]:
        raw = Recording()
        batched = BatchedWrites(raw, asyncio.get_running_loop())
        batched.write(b"late")
        raw.close()  # the connection went away before the turn ended
        await _next_turn()
        return raw.writes

    assert asyncio.run(go()) == []


# ------------------------------------------------------------- on a real server

class Counted(BatchedWrites):
    """Counts what reaches the socket's transport, per response path (the tests' spy)."""

    writes: ClassVar[list[bytes]] = []

    def flush(self) -> None:
        size = len(self._held)
        if size:
            Counted.writes.append(b"".join(self._held))
        super().flush()


async def _json(request: Request) -> Response:
    return JSONResponse({"answer": "x" * 100})


async def _frames(pause: float) -> AsyncIterator[bytes]:
    for n in range(3):
        if pause and n:
            await asyncio.sleep(pause)
        yield f"data: {n}\n\n".encode()
    yield b"data: [DONE]\n\n"


_LEFT_BEFORE_THE_WORK: list[bytes] = []


class AnswerThenWork:
    """An ASGI app: an answer, then work done after it (as a paid answer's charge is); what
    had been written when that work began is noted."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        _LEFT_BEFORE_THE_WORK.append(b"".join(Counted.writes))


async def _stream(request: Request) -> Response:
    pause = float(request.query_params.get("pause", "0"))
    return StreamingResponse(_frames(pause), media_type="text/event-stream")


@pytest.fixture(params=["h11", "httptools"])
def served(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[tuple[str, int]]:
    monkeypatch.setattr(server_module, "BatchedWrites", Counted)
    protocol: HttpProtocol = request.param
    app = Starlette(routes=[Route("/json", _json), Route("/stream", _stream),
                            Route("/then-work", AnswerThenWork())])
    with served_on_a_thread(lambda port: uvicorn_config(app, "127.0.0.1", port,
                                                        ServerLimits(), protocol),
                            WAIT) as address:
        yield address


def _get(address: tuple[str, int], path: str) -> bytes:
    """The whole response to ``GET path`` on a connection closed after it."""
    Counted.writes = []
    with socket.create_connection(address, timeout=WAIT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_json_answer_is_one_write(served: tuple[str, int]) -> None:
    data = _get(served, "/json")
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'"' + b"x" * 100 + b'"}')
    assert Counted.writes == [data]


def test_frames_made_back_to_back_are_one_write(served: tuple[str, int]) -> None:
    data = _get(served, "/stream")
    assert data.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in data
    assert data.index(b"data: 0") < data.index(b"data: 2") < data.index(b"data: [DONE]")
    assert Counted.writes == [data]


def test_frames_with_a_wait_between_them_are_not_held_for_each_other(
        served: tuple[str, int]) -> None:
    data = _get(served, "/stream?pause=0.05")
    assert data.endswith(b"0\r\n\r\n") and b"data: [DONE]" in data
    assert len(Counted.writes) >= 3  # the head with frame 0, frame 1, frame 2 with the end
    assert b"data: 0" in Counted.writes[0] and b"data: 1" not in Counted.writes[0]
    assert b"".join(Counted.writes) == data


def test_an_answer_is_out_before_the_work_after_it_begins(served: tuple[str, int]) -> None:
    """On a kept-alive connection (closing one writes what is held anyway)."""
    _LEFT_BEFORE_THE_WORK.clear()
    Counted.writes = []
    with socket.create_connection(served, timeout=WAIT) as sock:
        sock.sendall(b"GET /then-work HTTP/1.1\r\nhost: x\r\n\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\nok"):
            data += sock.recv(65536)
    assert [data] == _LEFT_BEFORE_THE_WORK  # headers and body, in one write, before the work
