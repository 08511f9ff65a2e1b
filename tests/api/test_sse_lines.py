"""Reading a peer's event stream: lines as any SSE reader splits them, and a line
without end is refused once it passes the limit instead of filling memory."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import httpx
import pytest

from agoranet.api.sse import iter_sse_data


async def data_of(chunks: list[bytes], max_line: int = 1000,
                  headers: dict[str, str] | None = None) -> list[str]:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body(), headers={
            "content-type": "text/event-stream", **(headers or {})})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client, \
            client.stream("GET", "http://node/stream") as response:
        return [d async for d in iter_sse_data(response, max_line=max_line)]


async def test_lines_split_across_chunks_and_line_ends() -> None:
    chunks = [b"data: {\"a\"", b": 1}\n\nda", b"ta: 2\r\n\r\n: comment\rdata: 3\r",
              b"\ndata: [DONE]\n\ndata: after\n\n", b"data: 4"]
    assert await data_of(chunks) == ['{"a": 1}', "2", "3"]
    assert await data_of([b"data: last"]) == ["last"]
    assert await data_of(["data: \u00e9t\u00e9\n".encode()[:8], "data: \u00e9t\u00e9\n".encode()[8:]]) \
        == ["\u00e9t\u00e9"]


async def test_an_endless_line_is_refused() -> None:
    with pytest.raises(httpx.DecodingError, match="longer than 1000"):
        await data_of([b"data: " + b"[" * 600, b"[" * 600, b"]" * 10])
    assert await data_of([b"data: " + b"x" * 990 + b"\n"]) == ["x" * 990]


async def test_a_compressed_stream_is_decompressed_first() -> None:
    packed = gzip.compress(b"data: {\"a\": 1}\n\ndata: \xc3\xa9\n\ndata: [DONE]\n\n")
    chunks = [packed[:10], packed[10:]]
    assert await data_of(chunks, headers={"content-encoding": "gzip"}) == ['{"a": 1}', "\u00e9"]


async def test_bytes_that_are_not_utf8_are_replaced_not_fatal() -> None:
    assert await data_of([b"data: a\xffb\n\n"]) == ["a\ufffdb"]
