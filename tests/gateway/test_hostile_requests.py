"""Malformed requests to the gateway are 400s, never 500s (issue #12, defects 3 and 4).

An integer of more than 4,300 digits in the body, a 4,000-digit ``max_tokens``
(the ranking's float conversion overflowed), an ``agoranet`` field that is not an
object (the policy merged it as a mapping), 100,000 nested arrays.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from agoranet.config import GatewaySettings, NodeSettings
from agoranet.engines.base import Prepared, StreamEvent
from agoranet.gateway.app import build_service, create_gateway_app
from agoranet.node.app import create_app
from fakes import FakeEngine
from helpers import served

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "one two"}], "max_tokens": 3}


class CountingEngine(FakeEngine):
    """The fake engine, counting the generations it started."""

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.calls = 0

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        return super().stream(prepared)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, CountingEngine]]:
    engine = CountingEngine()
    node_app = create_app(engine, NodeSettings(fine_tuning=False, free=True))
    async with served(node_app) as root:
        service = build_service(GatewaySettings(nodes=[f"{root}/v1"],
                                                spend_log=tmp_path / "spend.sqlite"))
        await service.directory.refresh()
        app = create_gateway_app(service)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     timeout=30) as client:
            yield client, engine
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()


def with_raw(field: str, raw: str) -> str:
    return json.dumps(CHAT)[:-1] + f', "{field}": {raw}}}'


@pytest.mark.parametrize(("name", "content"), [
    ("max_tokens of 4,000 digits", with_raw("max_tokens", "9" * 4000).replace(
        '"max_tokens": 3, ', "")),
    ("max_tokens of 5,000 digits", with_raw("max_tokens", "9" * 5000).replace(
        '"max_tokens": 3, ', "")),
    ("max_completion_tokens of 79 digits", with_raw("max_completion_tokens", "9" * 79)),
    ("a seed of 4,400 digits", with_raw("seed", "1" * 4400)),
    ("agoranet a string", with_raw("agoranet", '"cheapest"')),
    ("agoranet a list", with_raw("agoranet", '[{"prefer": "cheapest"}]')),
    ("agoranet a number", with_raw("agoranet", "5")),
    ("agoranet false", with_raw("agoranet", "false")),
    ("100,000 nested arrays", "[" * 100_000 + "]" * 100_000),
    ("nested objects", '{"a":' * 5000 + "1" + "}" * 5000),
])
async def test_malformed_gateway_requests_are_400(
        gateway: tuple[httpx.AsyncClient, CountingEngine], name: str, content: str) -> None:
    client, engine = gateway
    response = await client.post("/v1/chat/completions", content=content,
                                 headers={"content-type": "application/json"})
    assert engine.calls == 0, name  # no node was asked
    assert response.status_code == 400, (name, response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"], name
    # and the gateway still answers
    ok = await client.post("/v1/chat/completions", json=CHAT)
    assert ok.status_code == 200, ok.text
    assert engine.calls == 1


def test_ranking_takes_any_integer_max_tokens_and_prices() -> None:
    """Ranking compares exact integers as floats: a 4,000-digit ``max_tokens`` (the API
    layer refuses it, but the ranking must not depend on that) or a hostile offer's huge
    price ranks last instead of raising OverflowError."""
    from agoranet.gateway.nodes import NodeState
    from agoranet.gateway.policy import Policy
    from agoranet.gateway.ranking import rank
    from agoranet.registry.offer import ModelOffer, Offer, Price

    def node(url: str, price: int) -> NodeState:
        model = ModelOffer(id="m", context_length=64,
                           price=Price(input_per_million=price, output_per_million=price))
        return NodeState(url, offer=Offer(engine="sim", models=[model]))

    nodes = [node("http://dear", 10**4000), node("http://cheap", 1)]
    for prefer in ("cheapest", "fastest", "balanced"):
        ranked = rank(nodes, "m", 10, 10**4000, Policy(prefer=prefer))
        assert len(ranked) == 2
        ranked = rank(nodes, "m", 10, 5, Policy(prefer=prefer))
        assert ranked[0][0].url == "http://cheap" or prefer == "fastest"


async def test_a_huge_or_endless_offer_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node's offer is read up to MAX_OFFER_BYTES and for a bounded time."""
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from agoranet.gateway import directory as directory_module
    from agoranet.gateway.directory import NodeDirectory

    async def huge(request: object) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b'{"engine": "x", "models": [], "pad": "'
            for _ in range(300):  # ~3 MB, never finished
                yield b"x" * 10_000
        return StreamingResponse(body(), media_type="application/json")

    async def endless(request: object) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            while True:
                yield b" "
                await asyncio.sleep(0.05)
        return StreamingResponse(body(), media_type="application/json")

    monkeypatch.setattr(directory_module, "_OFFER_DEADLINE_S", 1.0, raising=False)
    for handler, words in ((huge, "larger than the limit"), (endless, "not sent within")):
        app = Starlette(routes=[Route("/.well-known/agoranet", handler)])
        async with served(app) as root, httpx.AsyncClient() as client:
            nodes = NodeDirectory([f"{root}/v1"], client)
            await nodes.refresh()
            [node] = nodes.nodes.values()
            assert node.offer is None
            assert words in (node.offer_error or ""), node.offer_error


async def test_bodies_over_the_limit_are_413_with_or_without_a_length(
        gateway: tuple[httpx.AsyncClient, CountingEngine]) -> None:
    client, engine = gateway
    big = json.dumps({**CHAT, "pad": "x" * (5 * 1024 * 1024)}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    for content in (big, chunked()):
        response = await client.post("/v1/chat/completions", content=content,
                                     headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text[:300]
        assert response.json()["error"]["code"] == "payload_too_large"
    assert engine.calls == 0
