"""Excess requests get 429 with Retry-After; the queue drains afterwards."""

from __future__ import annotations

import asyncio

import httpx

from agoranet.config import NodeSettings
from agoranet.node.app import create_app
from fakes import FakeEngine


async def test_over_the_queue_limit_answers_429() -> None:
    engine = FakeEngine(delay=0.01, max_active=1, max_queue=1)
    app = create_app(engine, NodeSettings())  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    body = {"model": "fake", "messages": [{"role": "user", "content": "x"}], "max_tokens": 30}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            responses = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=body) for _ in range(5))
            )
            statuses = sorted(r.status_code for r in responses)
            assert statuses == [200, 200, 429, 429, 429]
            refused = next(r for r in responses if r.status_code == 429)
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["type"] == "rate_limit_error"
            # Once the queue drains the node serves again.
            again = await client.post("/v1/chat/completions", json=body)
            assert again.status_code == 200
            assert again.json()["usage"]["completion_tokens"] == 30
    finally:
        await engine.aclose()
