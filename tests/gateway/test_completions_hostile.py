"""Malformed text completion requests to the gateway are 400s naming what is wrong, never
500s, and no node is asked; the gateway answers the next request (over a real node app
served by uvicorn with the fake engine)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from agoranet.config import GatewaySettings, NodeSettings
from agoranet.engines.base import Prepared, StreamEvent
from agoranet.gateway.app import build_service, create_gateway_app
from agoranet.node.app import create_app
from fakes import FakeEngine
from helpers import bound_socket

TEXT = {"model": "fake", "prompt": "one two", "max_tokens": 3}


class CountingEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.calls = 0

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        return super().stream(prepared)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, CountingEngine]]:
    engine = CountingEngine()
    sock = bound_socket()  # bound now: no other process can take it meanwhile
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(engine, NodeSettings(
        fine_tuning=False, free=True)), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    service = build_service(GatewaySettings(nodes=[f"http://127.0.0.1:{port}/v1"],
                                            spend_log=tmp_path / "spend.sqlite"))
    await service.directory.refresh()
    transport = httpx.ASGITransport(app=create_gateway_app(service), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     timeout=30) as client:
            yield client, engine
    finally:
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()
        server.should_exit = True
        await task


def with_raw(field: str, raw: str) -> str:
    return json.dumps({k: v for k, v in TEXT.items() if k != field})[:-1] + \
        f', "{field}": {raw}}}'


@pytest.mark.parametrize(("content", "param"), [
    (with_raw("max_tokens", "9" * 4000), None),
    (with_raw("max_tokens", "0"), "max_tokens"),
    (with_raw("max_tokens", '"many"'), "max_tokens"),
    (with_raw("seed", "1" * 4400), None),
    (with_raw("n", "9" * 79), "n"),
    (with_raw("best_of", "2.5"), "best_of"),
    (with_raw("logprobs", "6"), "logprobs"),
    (with_raw("prompt", "[[1, 2], [3]]"), "prompt"),
    (with_raw("prompt", "[" * 30 + "]" * 30), "prompt"),
    (with_raw("prompt", "null"), "prompt"),
    (with_raw("agoranet", '"cheapest"'), "agoranet"),
    (with_raw("agoranet", '{"prefer": "richest"}'), "agoranet"),
    (with_raw("stream", '"yes"'), "stream"),
    (with_raw("stop", '["a", "b", "c", "d", "e"]'), "stop"),
    (with_raw("temperature", "3"), "temperature"),
    (with_raw("logit_bias", '{"1": 100}'), "logit_bias"),
    ('{"prompt": "x"}', "model"),
    ("[]", None),
])
async def test_malformed_completion_requests_are_400(
        gateway: tuple[httpx.AsyncClient, CountingEngine], content: str,
        param: str | None) -> None:
    client, engine = gateway
    response = await client.post("/v1/completions", content=content,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param, error
    assert engine.calls == 0  # no node was asked
    ok = await client.post("/v1/completions", json=TEXT)
    assert ok.status_code == 200, ok.text
    answer = ok.json()
    assert answer["object"] == "text_completion" and answer["choices"][0]["text"]
    assert engine.calls == 1


async def test_plain_streamed_and_echoed_over_the_fake_engine(
        gateway: tuple[httpx.AsyncClient, CountingEngine]) -> None:
    client, _ = gateway
    plain = (await client.post("/v1/completions", json={**TEXT, "echo": True})).json()
    assert plain["choices"][0]["text"].startswith("one two")
    assert plain["usage"]["completion_tokens"] == 3
    async with client.stream("POST", "/v1/completions", json={
            **TEXT, "stream": True, "stream_options": {"include_usage": True}}) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["object"] == "text_completion" for e in events)
    text = "".join(c["text"] for e in events for c in e["choices"])
    assert text == plain["choices"][0]["text"].removeprefix("one two")
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    unlimited = await client.post("/v1/completions", json={**TEXT, "max_tokens": None})
    assert unlimited.status_code == 200, unlimited.text  # each node fills its context
    assert unlimited.json()["usage"]["completion_tokens"] > 0
