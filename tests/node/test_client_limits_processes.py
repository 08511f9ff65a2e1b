"""What one client may hold of a real gateway or node process (issue #12, defect 9).

Sockets that never send a request, headers that never finish and a body shorter
than its Content-Length used to be held forever, and any number of them. Now the
headers are due within ``header_timeout_s``, a stalled body is answered 408 after
``body_timeout_s``, and connections over ``max_connections`` are closed at once.
The limits are set short here through the environment of the processes, which serve
with each HTTP parser in turn (h11, httptools).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import httpx
import pytest

from agoranet.node.launcher import free_port, running_command
from helpers import node_process

pytestmark = pytest.mark.slow

WAIT = 15.0  # bounds every read; the limits under test are 1 s


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    return socket.create_connection((host, int(port)), timeout=WAIT)


def closed_by_server(sock: socket.socket) -> bool:
    """Read until the server closes the connection (True) or WAIT passes (False)."""
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body


@pytest.fixture(params=["h11", "httptools"])
def protocol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The HTTP parser the processes serve with (the same limits hold for both)."""
    for who in ("GATEWAY", "NODE"):
        monkeypatch.setenv(f"AGORANET_{who}_HTTP_PROTOCOL", request.param)
    return str(request.param)


@pytest.fixture
def short_limits(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for who in ("GATEWAY", "NODE"):
        monkeypatch.setenv(f"AGORANET_{who}_HEADER_TIMEOUT_S", "1")
        monkeypatch.setenv(f"AGORANET_{who}_BODY_TIMEOUT_S", "1")
        monkeypatch.setenv(f"AGORANET_{who}_KEEP_ALIVE_S", "1")


@pytest.fixture
def gateway(short_limits: None, tmp_path: Path) -> Iterator[str]:
    with running_command(["gateway", "--open", "--node", f"http://127.0.0.1:{free_port()}/v1",
                          "--spend-log", str(tmp_path / "spend.sqlite")]) as url:
        yield url


def stalled_body(sock: socket.socket) -> None:
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":")


def check_client_limits(url: str) -> None:
    with ExitStack() as stack:
        idle = [stack.enter_context(closing(connect(url))) for _ in range(200)]
        slow = stack.enter_context(closing(connect(url)))
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
        short = stack.enter_context(closing(connect(url)))
        stalled_body(short)
        status, body = read_response(short)
        assert status == 408, body
        error = json.loads(body)["error"]
        assert error["code"] == "request_timeout" and error["message"]
        assert closed_by_server(slow), "headers that never finish hold the connection"
        assert all(closed_by_server(sock) for sock in idle), "idle sockets are held"
    # and the server still answers
    assert httpx.get(f"{url.removesuffix('/v1')}/health", timeout=WAIT).status_code == 200


def test_gateway_drops_idle_slow_and_short_clients(gateway: str) -> None:
    check_client_limits(gateway)


def test_node_drops_idle_slow_and_short_clients(short_limits: None, tiny_model: Path) -> None:
    with node_process(["--model", str(tiny_model), "--free", "--no-fine-tuning",
                       "--no-adapters"]) as url:
        check_client_limits(url)


def test_connections_over_the_limit_are_closed(protocol: str, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("AGORANET_GATEWAY_MAX_CONNECTIONS", "20")
    monkeypatch.setenv("AGORANET_GATEWAY_HEADER_TIMEOUT_S", "120")  # not what closes them
    with running_command(["gateway", "--open", "--node", f"http://127.0.0.1:{free_port()}/v1",
                          "--spend-log", str(tmp_path / "spend.sqlite")]) as url:
        with ExitStack() as stack:
            held = [stack.enter_context(closing(connect(url))) for _ in range(20)]
            extra = stack.enter_context(closing(connect(url)))
            with contextlib.suppress(OSError):  # it may be closed already
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _ = read_response(extra)
            assert status == 0, "a connection over the limit was served"
            for sock in held:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert read_response(sock)[0] == 200  # the ones within the limit are served
        deadline = time.monotonic() + WAIT
        while True:  # once they are gone, new clients are served again
            try:
                if httpx.get(f"{url.removesuffix('/v1')}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
