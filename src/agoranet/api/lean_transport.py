"""An httpx transport for plain-HTTP/1.1 peers, on asyncio protocols and httptools.

The gateway talks to nodes and tool sellers over many short requests, where the
client's own cost is most of what a proxy adds: httpx's default transport
(httpcore, h11, anyio streams) spends about 0.3 ms a request on the gateway's
relay path that this one does not. :class:`LeanTransport` keeps httpx's client
(its auth flows, the gateway's payer among them, timeouts, events) and replaces
only the connection underneath:

- ``http://`` requests go over pooled keep-alive connections: one
  :class:`asyncio.Protocol` each, the response read by httptools (llhttp, the parser
  uvicorn serves with), its body handed over as it arrives;
- anything else -- ``https://``, ``HEAD`` (a response without a body the parser
  cannot tell), an upgrade -- goes to ``fallback`` (httpx's own transport).

It keeps the rules httpcore keeps: a connection goes back to the pool only once its
response was read to the end and both sides keep it alive; an idle one is dropped
after ``keepalive_expiry`` seconds (before the peer drops it); a request is not sent
twice; the timeouts of the request (``connect``, ``read`` for each wait for data,
``pool`` for a free slot under ``max_connections``) apply, and failures are httpx's
exceptions (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``...), so a
caller cannot tell the transports apart by what they raise. A response body the
reader is slow to take pauses the socket past ``_HIGH_WATER`` bytes buffered.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, cast

import httptools
import httpx

__all__ = ["LeanTransport"]

_HIGH_WATER: Final = 1 << 20  # bytes of a response buffered before the socket pauses
_Origin = tuple[str, int]


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the request written, its response parsed as it comes."""

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.busy = False  # a request is in flight (an idle connection expects no bytes)
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.done = False  # the whole response is read
        self.error: httpx.TransportError | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.delimited = False  # the body has a length or is chunked (else: until close)
        self.keep_alive = False  # both sides keep the connection (known with the head)

    # ------------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and not self.done and not self.delimited and self.error is None:
            self.done = True  # a body that runs until the peer closes: it has ended
        elif not self.done and self.error is None:
            self.error = httpx.RemoteProtocolError(
                "the peer closed the connection without sending a complete response")
        self._wake()

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # bytes no request asked for: the connection cannot be trusted
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx.RemoteProtocolError(f"malformed HTTP response: {exc}")
            self.close()
        self._wake()

    def eof_received(self) -> bool | None:
        return False  # close the transport: connection_lost says what it means

    # ------------------------------------------------------------------ httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200:  # interim (100 Continue...): the answer comes after it
            return
        if self.status in (204, 304):
            self.delimited = True  # no body
        self.keep_alive = self.parser.should_keep_alive()  # llhttp knows it here, not after
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def on_message_complete(self) -> None:
        if not self.head_done:  # an interim response ended: forget it, the answer follows
            self.headers.clear()
            return
        self.done = True

    # ------------------------------------------------------------------ the caller's side

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float | None, request: httpx.Request) -> None:
        """Until more of the response (or its end, or an error) has come."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the response", request=request) \
                from None
        finally:
            self._waiter = None

    def take(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered <= _HIGH_WATER // 2 and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False
        return chunk

    def reusable(self) -> bool:
        return self.done and not self.closed and self.error is None and self.keep_alive

    def recycle(self) -> None:
        self._reset()
        self.busy = False
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Body(httpx.AsyncByteStream):
    """A response body as it arrives; closing it gives the connection back (or drops it)."""

    def __init__(self, pool: LeanTransport, conn: _Connection, request: httpx.Request,
                 read_timeout: float | None) -> None:
        self._pool, self._conn, self._request = pool, conn, request
        self._timeout = read_timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            while conn.chunks:
                yield conn.take()
            if conn.error is not None:
                raise _with_request(conn.error, self._request)
            if conn.done:
                return
            await conn.wait(self._timeout, self._request)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool._release(self._conn)


class LeanTransport(httpx.AsyncBaseTransport):
    """Plain-HTTP/1.1 requests on pooled asyncio connections; others to ``fallback``."""

    def __init__(self, *, max_connections: int = 512, max_keepalive_connections: int = 128,
                 keepalive_expiry: float = 5.0,
                 fallback: httpx.AsyncBaseTransport | None = None) -> None:
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_keepalive_connections
        self._expiry = keepalive_expiry
        self._fallback = fallback or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_keepalive_connections,
                                keepalive_expiry=keepalive_expiry))
        self.opened = 0  # connections opened so far (tests, metrics)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http" or request.method in ("HEAD", "CONNECT") or \
                "upgrade" in request.headers:
            return await self._fallback.handle_async_request(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        origin = (url.host, url.port or 80)
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no connection free in time", request=request) from None
        conn: _Connection | None = None
        try:
            conn = self._idle_connection(origin) or await self._connect(
                origin, timeouts.get("connect"), request)
            await _send(conn, request)
            while not conn.head_done:
                if conn.error is not None:
                    raise _with_request(conn.error, request)
                await conn.wait(timeouts.get("read"), request)
        except BaseException:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise
        return httpx.Response(conn.status, headers=conn.headers,
                              stream=_Body(self, conn, request, timeouts.get("read")),
                              extensions={"http_version": b"HTTP/1.1"})

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if not conn.closed and now - conn.idle_since < self._expiry:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: _Origin, timeout: float | None,
                       request: httpx.Request) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Connection(origin), *origin)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {origin[0]}:{origin[1]} in time",
                                       request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or f"cannot connect to {origin[0]}:{origin[1]}",
                                     request=request) from exc
        self.opened += 1
        return conn

    def _release(self, conn: _Connection) -> None:
        """The response is closed: keep its connection if it can carry another, free its slot."""
        try:
            if conn.reusable() and self._idle_count < self._max_idle:
                conn.recycle()
                self._idle.setdefault(conn.origin, []).append(conn)
                self._idle_count += 1
            else:
                conn.close()
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        self._idle_count = 0
        await self._fallback.aclose()


async def _send(conn: _Connection, request: httpx.Request) -> None:
    """Write the request line, headers and body (chunked when it has no length)."""
    transport = conn.transport
    if transport is None or conn.closed:
        raise httpx.RemoteProtocolError("the connection closed before the request was sent",
                                        request=request)
    conn.busy = True
    target = request.url.raw_path
    head = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    chunked = False
    for name, value in request.headers.raw:
        head += [name, b": ", value, b"\r\n"]
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
    head.append(b"\r\n")
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):  # a body known whole: one write with the head
        transport.write(b"".join(head) + await request.aread())
        return
    transport.write(b"".join(head))
    assert isinstance(stream, httpx.AsyncByteStream)
    async for part in stream:
        if conn.closed:
            break
        if chunked:
            if part:
                transport.write(b"%x\r\n%s\r\n" % (len(part), part))
        else:
            transport.write(part)
    if chunked and not conn.closed:
        transport.write(b"0\r\n\r\n")


def _with_request(error: httpx.TransportError, request: httpx.Request) -> httpx.TransportError:
    """``error`` as raised for ``request`` (a fresh one each time: a traceback is per raise)."""
    return type(error)(str(error), request=request)

