"""The gateway's client to nodes keeps no cookies: a node's Set-Cookie does not follow the
gateway's later requests to it (or to another node)."""

from __future__ import annotations

import httpx

from agoranet.gateway.node_client import node_client


async def test_a_nodes_cookie_is_not_sent_back() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "track=me; Path=/"}, json={})

    client = node_client()
    client._transport = httpx.MockTransport(handler)
    async with client:
        for url in ("http://a/v1/models", "http://a/v1/models", "http://b/v1/models"):
            (await client.get(url)).raise_for_status()
        assert not client.cookies
    assert seen == [None, None, None]
