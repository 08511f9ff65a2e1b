"""Deeply nested JSON against real node and gateway processes (issue #12, defect 3).

100,000 nested arrays (~200 KB) used to kill either process with SIGSEGV: web3's
py_ecc raises the recursion limit to 100,000 and the C JSON scanner overflowed the
stack. The body, and the same thing sent back by a hostile node (an SSE line, an
error body), must now be a 4xx / a failed node, and both processes stay up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.node.launcher import running_command
from helpers import bound_socket, node_process

pytestmark = pytest.mark.slow

DEEP = b"[" * 100_000 + b"]" * 100_000
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def hostile_node(offer: dict[str, object], answer: str) -> Starlette:
    """A node that publishes a real offer and answers chats with 100,000 nested arrays:
    in an SSE line (``answer="sse"``) or in an error body (``answer="error"``)."""

    async def well_known(request: Request) -> Response:
        return JSONResponse(offer)

    async def chat(request: Request) -> Response:
        if answer == "sse":
            return Response(b"data: " + DEEP + b"\n\n", media_type="text/event-stream")
        return Response(DEEP, status_code=500, media_type="application/json")

    return Starlette(routes=[Route("/.well-known/agoranet", well_known),
                             Route("/v1/chat/completions", chat, methods=["POST"])])


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    sock = bound_socket()  # bound now: no other process can take it meanwhile
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, args=([sock],), daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the hostile node did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def alive(url: str) -> bool:
    return httpx.get(f"{url.removesuffix('/v1')}/health", timeout=5).status_code == 200


def test_deep_json_is_a_4xx_from_node_and_gateway_and_from_hostile_nodes(
        tiny_model: Path, tmp_path: Path) -> None:
    with ExitStack() as stack:
        node = stack.enter_context(node_process(
            ["--model", str(tiny_model), "--free", "--no-fine-tuning", "--no-adapters"]))
        offer = httpx.get(f"{node.removesuffix('/v1')}/.well-known/agoranet", timeout=5).json()
        sse = stack.enter_context(serving(hostile_node(offer, "sse")))
        error = stack.enter_context(serving(hostile_node(offer, "error")))
        gateway = stack.enter_context(running_command(
            ["gateway", "--open", "--node", sse, "--node", error,
             "--spend-log", str(tmp_path / "spend.sqlite")]))
        deadline = time.monotonic() + 30
        while not all(row["models"] for row in httpx.get(
                f"{gateway.removesuffix('/v1')}/agoranet/nodes", timeout=5).json()["nodes"]):
            assert time.monotonic() < deadline, "the gateway never read the hostile offers"
            time.sleep(0.2)

        for url in (node, gateway):  # the body itself
            response = httpx.post(f"{url}/chat/completions", content=DEEP, timeout=30,
                                  headers={"content-type": "application/json"})
            assert response.status_code == 400, (url, response.text[:300])
            assert "nested deeper" in response.json()["error"]["message"]
            assert alive(url)

        # both hostile nodes are tried (one fails over to the other); neither answer is JSON
        # the gateway can take, so the client gets an upstream error, and the gateway lives
        response = httpx.post(f"{gateway}/chat/completions", json=CHAT, timeout=30)
        assert response.status_code in (502, 503), response.text[:300]
        assert response.json()["error"]["type"] == "upstream_error"
        rows = httpx.get(f"{gateway.removesuffix('/v1')}/agoranet/nodes", timeout=5).json()
        assert [row["failures"] for row in rows["nodes"]] == [1, 1]  # both were tried
        streamed = httpx.post(f"{gateway}/chat/completions", json={**CHAT, "stream": True},
                              timeout=30)
        assert streamed.status_code in (200, 502, 503)
        assert alive(gateway)
        assert alive(node)
