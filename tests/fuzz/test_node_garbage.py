"""A node's garbage at the gateway: 503 (or an error event in a started stream), never 500.

Events found by ``bench/fuzz.py``: JSON objects of the wrong shape (text that is a
number, an ``error`` that is a list, ``agoranet`` or ``choices`` of the wrong type,
usage counts that are not integers) made the gateway's relay raise TypeError or
AttributeError: a 500 before the first token, a connection cut mid-stream after.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.config import GatewaySettings
from agoranet.gateway.app import build_service, create_gateway_app
from agoranet.gateway.policy import Policy

from .garbage_node import GarbageNode, garbage_node
from .strategies import GOOD_STREAM, NodeScenario, _sse

HELLO = GOOD_STREAM[0]
GARBAGE = [
    {**HELLO, "choices": [{"index": 0, "delta": {"content": 2**31}, "finish_reason": None}]},
    {**HELLO, "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": 7}]},
    {**HELLO, "choices": [{"index": 0, "delta": ["x"], "finish_reason": None}]},
    {**HELLO, "choices": [1]},
    {**HELLO, "choices": {"0": "x"}},
    {**HELLO, "agoranet": []},
    {**HELLO, "usage": {"prompt_tokens": "many", "completion_tokens": 1}},
    {**HELLO, "usage": [3]},
    {"error": [{"a": 1}]},
    {"error": "boom"},
]


@pytest.fixture(scope="module")
def node() -> Iterator[GarbageNode]:
    with garbage_node() as fake:
        yield fake


@pytest.fixture
async def gateway(node: GarbageNode, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    service = build_service(GatewaySettings(nodes=[node.url],
                                            spend_log=tmp_path / "spend.sqlite"),
                            policy=Policy(ban_base_s=0.001, ban_cap_s=0.001))
    await service.directory.refresh()
    transport = httpx.ASGITransport(app=create_gateway_app(service))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client
    finally:
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()


def ask(stream: bool) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4,
            "stream": stream}


@pytest.mark.parametrize("event", GARBAGE, ids=range(len(GARBAGE)))
async def test_garbage_before_the_first_token_is_a_503(
        gateway: httpx.AsyncClient, node: GarbageNode, event: dict[str, Any]) -> None:
    node.scenario = NodeScenario(body=_sse([event, *GOOD_STREAM[1:], b"data: [DONE]\n\n"]))
    for stream in (False, True):
        response = await gateway.post("/v1/chat/completions", json=ask(stream))
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "upstream_error"


@pytest.mark.parametrize("event", GARBAGE, ids=range(len(GARBAGE)))
async def test_garbage_mid_stream_ends_the_stream_with_an_error_event(
        gateway: httpx.AsyncClient, node: GarbageNode, event: dict[str, Any]) -> None:
    node.scenario = NodeScenario(body=_sse([HELLO, event, *GOOD_STREAM[1:],
                                            b"data: [DONE]\n\n"]))
    async with gateway.stream("POST", "/v1/chat/completions", json=ask(True)) as response:
        assert response.status_code == 200
        events = [line[5:].strip() async for line in response.aiter_lines()
                  if line.startswith("data:")]
    assert json.loads(events[1])["choices"][0]["delta"]["content"] == "hello "
    assert json.loads(events[-1])["error"]["code"] == "no_node_available", events[-1]
