"""Starting a command on a port another process holds (:mod:`agoranet.node.launcher`).

A port the launcher picks is free only until the command binds it; on a loaded machine
(tests on two workers start hundreds of processes) another process can take it first. Then
the command fails to bind, while the other answers its health check: the launcher must
not take that answer for the command's, and gives a port it picked another try. A real
gateway process; the other process is a plain HTTP server answering ``/health``.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agoranet.errors import NodeStartError
from agoranet.node import launcher
from agoranet.node.launcher import free_port, running_command

pytestmark = pytest.mark.slow


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok", "stranger": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stranger() -> Iterator[int]:
    """The port of another process's server, healthy on ``/health``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _gateway(tmp_path: Path) -> list[str]:
    return ["gateway", "--open", "--node", f"http://127.0.0.1:{free_port()}/v1",
            "--spend-log", str(tmp_path / "spend.sqlite")]


def test_a_port_held_by_another_process_is_not_taken_for_the_commands(
        stranger: int, tmp_path: Path) -> None:
    with pytest.raises(NodeStartError, match=r"(?i)address already in use"), \
            running_command(_gateway(tmp_path), port=stranger, timeout=60):
        pass
    assert httpx.get(f"http://127.0.0.1:{stranger}/health", timeout=10).json()["stranger"]


def test_a_picked_port_taken_before_the_command_binds_it_is_replaced(
        stranger: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = iter([stranger])  # picked free, then taken; the next pick is a free port
    monkeypatch.setattr(launcher, "free_port", lambda: next(ports, None) or free_port())
    with running_command(_gateway(tmp_path), timeout=60) as url:
        assert f":{stranger}/" not in url
        health = httpx.get(url.removesuffix("/v1") + "/health", timeout=10).json()
        assert health == {"status": "ok", "nodes": 1}  # the gateway's, not the stranger's
