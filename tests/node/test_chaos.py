"""The failure-injection middleware used by demos and failover tests."""

from __future__ import annotations

import httpx
import pytest
from starlette.middleware import Middleware

from agoranet.config import NodeSettings
from agoranet.node.app import create_app
from agoranet.testing.chaos import ChaosMiddleware, ConnectionCut
from fakes import FakeEngine

BODY = {"model": "fake", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10,
        "stream": True}


def chaotic(engine: FakeEngine, **options: object) -> httpx.AsyncClient:
    app = create_app(engine, NodeSettings())  # type: ignore[arg-type]
    app.user_middleware.insert(0, Middleware(ChaosMiddleware, **options))  # type: ignore[arg-type]
    app.middleware_stack = app.build_middleware_stack()
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


async def read_stream(client: httpx.AsyncClient) -> list[str]:
    lines = []
    async with client.stream("POST", "/v1/chat/completions", json=BODY) as response:
        async for line in response.aiter_lines():
            if line:
                lines.append(line)
    return lines


async def test_every_other_stream_is_cut_after_three_frames() -> None:
    engine = FakeEngine(max_active=4, max_queue=4)
    try:
        async with chaotic(engine, fail_after=3, fail_every=2) as client:
            first = await read_stream(client)
            assert first[-1] == "data: [DONE]"
            with pytest.raises(ConnectionCut):  # through the in-process client, unwrapped
                await read_stream(client)
            plain = await client.post("/v1/chat/completions", json={**BODY, "stream": False})
            assert plain.status_code == 200
    finally:
        await engine.aclose()


async def test_delay_slows_each_frame() -> None:
    import time

    engine = FakeEngine()
    try:
        async with chaotic(engine, delay_ms=20) as client:
            started = time.perf_counter()
            lines = await read_stream(client)
            elapsed = time.perf_counter() - started
    finally:
        await engine.aclose()
    assert lines[-1] == "data: [DONE]"
    assert elapsed >= 0.02 * (len(lines) - 1)
