"""A node's ``/v1/embeddings`` request (in process, the tiny embedding model) is counted
like a chat request: its log line names the model and its input tokens, and the token
counter moves by them (the model showed ``-`` and 0 tokens before)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from agoranet.api.logformat import EVENTS_LOGGER, JsonFormatter
from agoranet.config import NodeSettings
from agoranet.engines.hf import transformers_engine
from agoranet.node.app import create_app
from promtext import Scrape

SECRET = "ops-metrics-test-secret-0123456789"
MODEL = "tiny-embed"


async def test_an_embeddings_request_is_counted_and_logged(
        embedding_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=EVENTS_LOGGER)
    engine = transformers_engine(str(embedding_model), device="cpu")
    app = create_app(engine, NodeSettings(fine_tuning=False, free=True), operator_secret=SECRET)
    auth = {"Authorization": f"Bearer {SECRET}"}
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
            before = Scrape((await client.get("/metrics", headers=auth)).text)
            reply = await client.post("/v1/embeddings", headers={"x-request-id": "req-emb"},
                                      json={"model": MODEL, "input": ["hello", "a river"]})
            assert reply.status_code == 200, reply.text
            after = Scrape((await client.get("/metrics", headers=auth)).text)
    finally:
        await engine.aclose()
    tokens = reply.json()["usage"]["prompt_tokens"]
    assert tokens > 2

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("agoranet_node_requests_total", model=MODEL, outcome="ok") == 1
    assert moved("agoranet_node_prompt_tokens_total", model=MODEL) == tokens
    assert moved("agoranet_node_completion_tokens_total", model=MODEL) == 0
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records
             if r.name == EVENTS_LOGGER]
    assert [(e["request_id"], e["model"], e["outcome"], e["prompt_tokens"],
             e["completion_tokens"]) for e in lines] == [("req-emb", MODEL, "ok", tokens, 0)]
