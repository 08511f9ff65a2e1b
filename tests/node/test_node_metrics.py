"""The node's ``/metrics`` (in process, a fake engine): only the operator's secret opens
it, Prometheus' parser reads it, its counters move by exactly the tokens of the requests
made, and each request is one log line without its prompt."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from agoranet.api.logformat import EVENTS_LOGGER, JsonFormatter, TextFormatter
from agoranet.config import NodeSettings
from agoranet.node.app import create_app
from fakes import FakeEngine
from promtext import Scrape

SECRET = "ops-metrics-test-secret-0123456789"
PROMPT = "please summarise the secret river manuscript"
CHAT = "/v1/chat/completions"


@pytest.fixture
async def node() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(FakeEngine(), NodeSettings(fine_tuning=False, free=True),
                     operator_secret=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        yield client


async def scrape(client: httpx.AsyncClient) -> Scrape:
    reply = await client.get("/metrics", headers={"Authorization": f"Bearer {SECRET}"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return Scrape(reply.text)


async def test_metrics_need_the_operator_secret(node: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-secret-wrong-secret"},
                    {"Authorization": SECRET}):
        reply = await node.get("/metrics", headers=headers)
        assert reply.status_code == 401, reply.text
        assert reply.json()["error"]["code"] == "invalid_api_key"
        assert SECRET not in reply.text and "agoranet_node" not in reply.text


async def test_a_node_without_a_secret_shows_its_metrics_to_no_one() -> None:
    app = create_app(FakeEngine(), NodeSettings(fine_tuning=False, free=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        reply = await client.get("/metrics", headers={"Authorization": "Bearer anything-at-all"})
    assert reply.status_code == 401


async def test_counters_move_by_the_requests_tokens(node: httpx.AsyncClient,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=EVENTS_LOGGER)
    before = await scrape(node)
    messages = [{"role": "user", "content": PROMPT}]
    plain = await node.post(CHAT, json={"model": "fake", "messages": messages, "max_tokens": 3},
                            headers={"x-request-id": "req-plain"})
    assert plain.status_code == 200, plain.text
    usage = plain.json()["usage"]
    streamed = 0
    async with node.stream("POST", CHAT, json={
            "model": "fake", "messages": messages, "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True}}) as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data: {"):
                streamed = (json.loads(line[6:]).get("usage") or {}).get(
                    "completion_tokens", streamed)
    missing = await node.post(CHAT, json={"model": "nope", "messages": messages})
    assert missing.status_code == 404
    after = await scrape(node)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert streamed == 5
    assert moved("agoranet_node_prompt_tokens_total", model="fake") == 2 * usage["prompt_tokens"]
    assert moved("agoranet_node_completion_tokens_total", model="fake") == 3 + 5
    assert moved("agoranet_node_requests_total", model="fake", outcome="ok") == 2
    assert moved("agoranet_node_requests_total", model="-", outcome="client_error") == 1
    assert moved("agoranet_node_request_latency_seconds_count", model="fake") == 2
    assert moved("agoranet_node_ttft_seconds_count", model="fake") == 1  # the stream's
    assert moved("agoranet_node_receipted_base_units_total") == 0  # a free node
    assert after.value("agoranet_node_requests_in_flight") == 0
    assert after.has("agoranet_node_queue_depth") and after.has("agoranet_node_active_sequences")

    events = [r for r in caplog.records if r.name == EVENTS_LOGGER]
    lines = [json.loads(JsonFormatter().format(r)) for r in events]
    assert {e["component"] for e in lines} == {"node"}
    assert [(e["event"], e["model"], e["outcome"]) for e in lines] == [
        ("request", "fake", "ok"), ("request", "fake", "ok"), ("request", "-", "client_error")]
    first = lines[0]
    assert (first["request_id"], first["prompt_tokens"], first["completion_tokens"],
            first["amount"], first["status"]) == ("req-plain", usage["prompt_tokens"], 3, 0, 200)
    assert lines[1]["stream"] is True and lines[1]["ttft_ms"] is not None
    assert all(isinstance(e["latency_ms"], float) for e in lines)
    text = "\n".join(TextFormatter().format(r) for r in events)
    assert "request_id=req-plain" in text and "completion_tokens=3" in text
    for rendered in (json.dumps(lines), text):
        assert "river" not in rendered and SECRET not in rendered
