"""What a client may hold of a server of ``agoranet.api.server``, with either HTTP parser.

A real uvicorn server (on a thread of its own, on uvloop where installed, as it serves
in production) runs a tiny app with short limits, once with h11 and once with httptools,
and raw sockets play the clients: a request line that is not HTTP is answered 400, a
head over ``max_header_bytes`` 431 (and the server goes on serving); headers that never
come, or never end, are cut after ``header_timeout_s``, from the connection's start and
from the previous response on a kept-alive connection; connections over
``max_connections`` are closed at once; requests within the limits (a large body sent
in one go with its headers, pipelined requests) are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import Iterator
from contextlib import ExitStack, closing

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agoranet.api.server import (
    HttpProtocol,
    ServerLimits,
    guarded_protocol,
    http_parser,
    run,
    uvicorn_config,
)
from agoranet.errors import ConfigError
from helpers import served_on_a_thread

WAIT = 10.0  # bounds every read; the header deadline under test is 0.5 s
LIMITS = ServerLimits(header_timeout_s=0.5, keep_alive_s=30, max_connections=8,
                      max_header_bytes=8 * 1024)
PROTOCOLS = ["h11", "httptools"]


async def _echo(request: Request) -> Response:
    return PlainTextResponse(f"{request.method} {len(await request.body())}")


@pytest.fixture(params=PROTOCOLS)
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    protocol: HttpProtocol = request.param
    app = Starlette(routes=[Route("/echo", _echo, methods=["GET", "POST"])])
    with served_on_a_thread(lambda port: uvicorn_config(app, "127.0.0.1", port, LIMITS,
                                                        protocol), WAIT) as address:
        yield address


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=WAIT)


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """What the server sent, and whether it closed the connection (within WAIT)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return data, False
    return data, True


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (or WAIT passes)."""
    return read_until_closed(sock)[0]


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


def closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def get(address: tuple[str, int], extra: bytes = b"") -> bytes:
    with closing(connect(address)) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n" + extra +
                     b"Connection: close\r\n\r\n")
        return read_all(sock)


def read_response(sock: socket.socket) -> bytes:
    """One response on a kept-alive connection (the app's bodies are short)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_the_protocol_asked_for_is_the_one_served() -> None:
    assert "H11" in guarded_protocol(LIMITS, "h11").__name__
    assert "HttpTools" in guarded_protocol(LIMITS, "httptools").__name__
    assert "HttpTools" in guarded_protocol(LIMITS).__name__  # installed: auto picks it


def test_without_httptools_auto_is_h11_and_httptools_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httptools", None)  # import httptools: ImportError
    assert http_parser("auto") == "h11" and http_parser("h11") == "h11"
    assert "H11" in guarded_protocol(LIMITS).__name__
    with pytest.raises(ConfigError, match="httptools"):
        http_parser("httptools")


def test_run_is_on_uvloop_where_installed() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(loop_module()).startswith("uvloop")


def error_code(response: bytes) -> str:
    """The ``code`` of the OpenAI error JSON a refusal carries (its content type checked)."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), response
    return str(json.loads(body)["error"]["code"])


def test_a_request_line_that_is_not_http_is_answered_400(server: tuple[str, int]) -> None:
    with closing(connect(server)) as sock:
        sock.sendall(b"this is not http at all\r\n\r\n")
        answer = read_all(sock)
    assert status_of(answer) == 400 and error_code(answer) == "invalid_http_request"
    assert status_of(get(server)) == 200  # and the server goes on serving


def test_a_header_with_control_bytes_is_answered_400_in_json(
        server: tuple[str, int], request: pytest.FixtureRequest) -> None:
    # what a fuzzed payment header looked like: a control byte and bytes over 0x7f
    answer = get(server, b"Payment-Signature: \x18\xb0\xedx\xd8S\xe9\xc8\r\n")
    if request.node.callspec.params["server"] == "h11":  # h11 takes it: the app answers
        assert status_of(answer) == 200, answer
    else:
        assert status_of(answer) == 400 and error_code(answer) == "invalid_http_request"
    assert status_of(get(server)) == 200


def test_headers_over_the_bound_are_answered_431(server: tuple[str, int]) -> None:
    big = b"X-Big: " + b"a" * (LIMITS.max_header_bytes + 1024) + b"\r\n"
    answer = get(server, big)
    assert status_of(answer) == 431 and error_code(answer) == "headers_too_large"
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(200))  # ~21 KiB
    assert status_of(get(server, many)) == 431
    assert status_of(get(server, b"X-Fine: " + b"c" * 4096 + b"\r\n")) == 200


def test_headers_sent_in_pieces_over_the_bound_are_cut(server: tuple[str, int]) -> None:
    with closing(connect(server)) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # cut while sending
            for _ in range(4 * LIMITS.max_header_bytes // 1024):
                sock.sendall(b"a" * 1024)
        data, closed = read_until_closed(sock)  # a reset may hide the server's 431
        assert closed, "headers without end hold the connection"
        assert status_of(data) in (0, 431), data  # refused, never served


def test_a_large_body_sent_with_its_headers_is_served(server: tuple[str, int]) -> None:
    body = b"x" * (8 * LIMITS.max_header_bytes)
    with closing(connect(server)) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(body), body))
        data = read_all(sock)
    assert status_of(data) == 200 and data.endswith(b"POST %d" % len(body))


def test_pipelined_requests_are_served(server: tuple[str, int]) -> None:
    with closing(connect(server)) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                     b"Connection: close\r\n\r\nabc")
        data = read_all(sock)
    assert data.count(b"HTTP/1.1 200") == 2 and data.endswith(b"POST 3")


def test_headers_due_from_the_start_and_after_each_response(server: tuple[str, int]) -> None:
    with ExitStack() as stack:
        silent = stack.enter_context(closing(connect(server)))
        slow = stack.enter_context(closing(connect(server)))
        slow.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
        kept = stack.enter_context(closing(connect(server)))
        kept.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(read_response(kept)) == 200
        kept.sendall(b"GET /echo HTTP/1.1\r\n")  # the next request's headers never end
        # keep_alive_s is 30 s (WAIT is 10): only the header deadline closes these
        assert closed_by_server(silent), "a connection that sends nothing is held"
        assert closed_by_server(slow), "headers that never finish hold the connection"
        assert closed_by_server(kept), "the next request's headers are not due in time"
    assert status_of(get(server)) == 200


def test_connections_over_the_cap_are_closed(server: tuple[str, int]) -> None:
    with ExitStack() as stack:
        held = [stack.enter_context(closing(connect(server)))
                for _ in range(LIMITS.max_connections)]
        extra = stack.enter_context(closing(connect(server)))
        with contextlib.suppress(OSError):  # closed already
            extra.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(read_all(extra)) == 0, "a connection over the cap was served"
        for sock in held:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status_of(read_all(sock)) == 200
