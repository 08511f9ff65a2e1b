"""Bodies over the node's limit are 413 in OpenAI's error JSON, also when sent chunked
(the limit used to surface inside the route's error mapping as a 500)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from agoranet.config import NodeSettings
from agoranet.node.app import create_app
from fakes import FakeEngine

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "one two"}], "max_tokens": 3}


async def test_chunked_bodies_over_the_limit_are_413() -> None:
    app = create_app(FakeEngine(), NodeSettings(fine_tuning=False, free=True,
                                                max_body_bytes=64 * 1024))
    big = json.dumps({**CHAT, "pad": "x" * 200_000}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 16384):
            yield big[start:start + 16384]

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        for path in ("/v1/chat/completions", "/v1/completions", "/tokenize"):
            response = await client.post(path, content=chunked(),
                                         headers={"content-type": "application/json"})
            assert response.status_code == 413, (path, response.text[:300])
            assert response.json()["error"]["code"] == "payload_too_large"
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
