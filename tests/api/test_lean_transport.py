"""``LeanTransport``: httpx's client over pooled asyncio connections and httptools.

Against a real uvicorn server (JSON, SSE streams, uploads, a 5 MB body read slowly) and
raw asyncio servers that misbehave on purpose (a body cut short, garbage, no answer, a
body that runs until the connection closes, bytes nobody asked for), on asyncio's loop
and on uvloop (the gateway's): answers arrive whole, a connection carries request after
request only when it is safe to, and every failure is the httpx exception httpx's own
transport raises.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agoranet.api.lean_transport import LeanTransport
from helpers import served

BIG = 5 * 1024 * 1024


async def _echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"method": request.method, "bytes": len(body),
                         "sum": sum(body) % 65521, "query": request.url.query})


async def _events(request: Request) -> Response:
    count = int(request.query_params.get("n", "3"))

    async def frames() -> AsyncIterator[bytes]:
        for i in range(count):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(frames(), media_type="text/event-stream")


async def _big(request: Request) -> Response:
    return Response(bytes(range(256)) * (BIG // 256), media_type="application/octet-stream")


APP = Starlette(routes=[Route("/echo", _echo, methods=["GET", "POST"]),
                        Route("/events", _events), Route("/big", _big)])
Scenario = Callable[[], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run_on(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    """Run a scenario (servers and client in one loop) on asyncio's loop or on uvloop."""
    def run(scenario: Scenario) -> None:
        if request.param == "uvloop":
            uvloop.run(scenario())
        else:
            asyncio.run(scenario())
    return run


@asynccontextmanager
async def raw_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                      Awaitable[None]]) -> AsyncIterator[str]:
    """An asyncio TCP server answering each connection with ``handle``; its root URL."""
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def client(transport: LeanTransport, timeout: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=timeout)


def test_requests_share_one_connection(run_on: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        transport = LeanTransport()
        async with served(APP) as url, client(transport) as http:
            got = (await http.post(f"{url}/echo?x=1", json={"a": [1, 2, 3]})).json()
            assert got == {"method": "POST", "bytes": len(b'{"a":[1,2,3]}'),
                           "sum": sum(b'{"a":[1,2,3]}') % 65521, "query": "x=1"}
            async with http.stream("GET", f"{url}/events?n=4") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                lines = [line async for line in response.aiter_lines() if line]
            assert lines == [f"data: {i}" for i in range(4)]
            assert (await http.get(f"{url}/echo")).json()["method"] == "GET"
            missing = await http.get(f"{url}/nowhere")
            assert missing.status_code == 404
            assert (await http.get(f"{url}/echo")).status_code == 200
        assert transport.opened == 1
    run_on(scenario)


def test_an_upload_without_a_length_is_sent_chunked(run_on: Callable[[Scenario], None]
                                                    ) -> None:
    async def scenario() -> None:
        parts = [bytes([i]) * 1000 for i in range(1, 6)]

        async def body() -> AsyncIterator[bytes]:
            for part in parts:
                yield part

        async with served(APP) as url, client(LeanTransport()) as http:
            got = (await http.post(f"{url}/echo", content=body())).json()
        whole = b"".join(parts)
        assert got["bytes"] == len(whole) and got["sum"] == sum(whole) % 65521
    run_on(scenario)


def test_a_large_body_read_slowly_arrives_whole(run_on: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async with served(APP) as url, client(LeanTransport()) as http:
            received = bytearray()
            async with http.stream("GET", f"{url}/big") as response:
                async for chunk in response.aiter_raw():
                    received += chunk
                    await asyncio.sleep(0.001)  # the socket pauses while this lags
        assert received == bytes(range(256)) * (BIG // 256)
    run_on(scenario)


def test_a_response_closed_half_read_is_not_reused(run_on: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        transport = LeanTransport()
        async with served(APP) as url, client(transport) as http:
            async with http.stream("GET", f"{url}/events?n=20") as response:
                async for _ in response.aiter_raw():
                    break  # hang up: the rest of this answer must not meet the next one
            got = await http.post(f"{url}/echo", content=b"abc")
            assert got.json()["bytes"] == 3
        assert transport.opened == 2
    run_on(scenario)


def test_a_body_until_close_and_a_closed_keep_alive(run_on: Callable[[Scenario], None]
                                                    ) -> None:
    """A response without a length ends when the peer closes; a connection the peer closed
    after answering (without saying so) is not used again."""
    async def scenario() -> None:
        async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                              ) -> None:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello")

        async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                                 ) -> None:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

        transport = LeanTransport()
        async with raw_server(until_close) as first, raw_server(one_then_close) as second, \
                client(transport) as http:
            assert (await http.get(first)).text == "hello"
            assert (await http.get(first)).text == "hello"
            assert transport.opened == 2
            assert (await http.get(second)).text == "ok"
            await asyncio.sleep(0.3)  # its close reaches the idle connection
            assert (await http.get(second)).text == "ok"
            assert transport.opened == 4
    run_on(scenario)


def test_an_interim_response_is_skipped(run_on: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async def continues(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                            ) -> None:
            while True:
                await read_head(reader)
                writer.write(b"HTTP/1.1 100 Continue\r\nx-interim: yes\r\n\r\n")
                await writer.drain()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal")

        transport = LeanTransport()
        async with raw_server(continues) as url, client(transport) as http:
            for _ in range(2):
                response = await http.get(url)
                assert (response.status_code, response.text) == (200, "final")
                assert "x-interim" not in response.headers
        assert transport.opened == 1
    run_on(scenario)


def test_failures_are_httpx_exceptions(run_on: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                            ) -> None:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd")

        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_head(reader)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await asyncio.sleep(1)

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_head(reader)
            await asyncio.sleep(5)

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_head(reader)

        async with raw_server(cut_short) as short, raw_server(garbage) as bad, \
                raw_server(silent) as quiet, raw_server(hang_up) as gone, \
                client(LeanTransport(), timeout=0.3) as http:
            with pytest.raises(httpx.RemoteProtocolError) as cut:
                await http.get(short)
            assert cut.value.request.url == httpx.URL(short)
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(bad)
            with pytest.raises(httpx.ReadTimeout):
                await http.get(quiet)
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post(gone, json={"paid": True})
        closed = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = closed.sockets[0].getsockname()[1]
        closed.close()
        await closed.wait_closed()
        async with client(LeanTransport()) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}/")
    run_on(scenario)


def test_bytes_nobody_asked_for_drop_an_idle_connection(run_on: Callable[[Scenario], None]
                                                        ) -> None:
    async def scenario() -> None:
        async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await read_head(reader)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale")

        transport = LeanTransport()
        async with raw_server(chatty) as url, client(transport) as http:
            assert (await http.get(url)).text == "ok"
            await asyncio.sleep(0.1)
            assert (await http.get(url)).text == "ok"  # not the stale answer
        assert transport.opened == 2
    run_on(scenario)


def test_pool_limit_and_idle_expiry(run_on: Callable[[Scenario], None]) -> None:
    async def scenario() -> None:
        transport = LeanTransport(max_connections=1, keepalive_expiry=1.0)
        async with served(APP) as url, client(transport) as http:
            async with http.stream("GET", f"{url}/events?n=50"):  # holds the one slot
                with pytest.raises(httpx.PoolTimeout):
                    await http.get(f"{url}/echo", timeout=httpx.Timeout(5.0, pool=0.1))
            assert (await http.get(f"{url}/echo")).status_code == 200  # the slot is free
            assert (await http.get(f"{url}/echo")).status_code == 200
            assert transport.opened == 2  # the stream's (closed half-read), then one reused
            await asyncio.sleep(1.2)  # idle past keepalive_expiry: dropped, not reused
            assert (await http.get(f"{url}/echo")).status_code == 200
        assert transport.opened == 3
    run_on(scenario)


def test_https_and_head_go_to_the_fallback() -> None:
    class Recording(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.seen: list[tuple[str, str]] = []

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.seen.append((request.method, str(request.url)))
            return httpx.Response(204)

    async def scenario() -> None:
        fallback = Recording()
        async with client(LeanTransport(fallback=fallback)) as http:
            await http.get("https://node.example/v1/models")
            await http.head("http://node.example/health")
        assert fallback.seen == [("GET", "https://node.example/v1/models"),
                                 ("HEAD", "http://node.example/health")]
    asyncio.run(scenario())


def test_json_round_trip_matches_httpx_own_transport(run_on: Callable[[Scenario], None]
                                                     ) -> None:
    """The same requests through both transports give the same status, headers that
    matter and bodies."""
    async def scenario() -> None:
        async with served(APP) as url, client(LeanTransport()) as lean, \
                httpx.AsyncClient(timeout=10) as stock:
            for method, path, body in (("POST", "/echo", {"k": "v" * 300}), ("GET", "/echo", None),
                                       ("GET", "/events?n=2", None), ("GET", "/nope", None)):
                a = await lean.request(method, url + path, json=body)
                b = await stock.request(method, url + path, json=body)
                assert (a.status_code, a.headers.get("content-type"), a.content) == \
                    (b.status_code, b.headers.get("content-type"), b.content)
                if a.headers.get("content-type") == "application/json":
                    assert json.loads(a.content) == json.loads(b.content)
    run_on(scenario)
