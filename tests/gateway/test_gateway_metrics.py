"""The gateway's ``/metrics`` (in process, over a priced fake node served on a real port):
only the owner key opens it, Prometheus' parser reads it, its token and spend counters move
by exactly the usage and amounts of the requests made, and each request is one log line
without its prompt or any key."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.api.logformat import EVENTS_LOGGER, JsonFormatter
from agoranet.config import GatewaySettings, NodeSettings
from agoranet.gateway.app import build_service, create_gateway_app
from agoranet.gateway.keystore import OWNER, KeyStore
from agoranet.node.app import create_app
from fakes import FakeEngine
from helpers import served
from promtext import Scrape

PROMPT = "tell me the secret recipe of the harbour soup"
CHAT = "/v1/chat/completions"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str],
                                                          Any]]:
    # A free node with a price list: the gateway counts what its answers were worth.
    node_app = create_app(FakeEngine(), NodeSettings(fine_tuning=False, free=True,
                                                     price_in=1_000_000, price_out=3_000_000))
    async with served(node_app) as root:
        service = build_service(GatewaySettings(nodes=[f"{root}/v1"],
                                                spend_log=tmp_path / "spend.sqlite"))
        await service.directory.refresh()
        keys = KeyStore(tmp_path / "keys.sqlite")
        secrets = {OWNER: keys.create(OWNER, parent=None, budget=None).secret}
        secrets["team"] = keys.create("team", parent=OWNER, budget=10_000).secret
        app = create_gateway_app(service, keys=keys)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     timeout=30) as client:
            yield client, secrets, service
        keys.close()
        await service.aclose()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def scrape(client: httpx.AsyncClient, owner: str) -> Scrape:
    reply = await client.get("/metrics", headers=bearer(owner))
    assert reply.status_code == 200, reply.text
    return Scrape(reply.text)


async def test_metrics_are_the_owners(gateway: tuple[httpx.AsyncClient, dict[str, str],
                                                     Any]) -> None:
    client, secrets, _ = gateway
    for headers in ({}, bearer(secrets["team"]), bearer("agn-not-a-key-at-all-0000")):
        reply = await client.get("/metrics", headers=headers)
        assert reply.status_code == 401, reply.text
        assert "agoranet_gateway" not in reply.text
        assert all(s not in reply.text for s in secrets.values())


async def test_counters_move_by_the_requests_usage_and_amounts(
        gateway: tuple[httpx.AsyncClient, dict[str, str], Any],
        caplog: pytest.LogCaptureFixture) -> None:
    client, secrets, service = gateway
    caplog.set_level(logging.INFO, logger=EVENTS_LOGGER)
    owner, team = secrets[OWNER], bearer(secrets["team"])
    before = await scrape(client, owner)
    spent_before = service.spend.total()
    messages = [{"role": "user", "content": PROMPT}]
    plain = await client.post(CHAT, headers=team, json={
        "model": "fake", "messages": messages, "max_tokens": 4})
    assert plain.status_code == 200, plain.text
    answers = [(plain.json()["usage"], plain.json()["agoranet"])]
    usage: dict[str, int] = {}
    summary: dict[str, Any] = {}
    async with client.stream("POST", CHAT, headers=team, json={
            "model": "fake", "messages": messages, "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}}) as reply:
        async for line in reply.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                summary = chunk.get("agoranet") or summary
    answers.append((usage, summary))
    capped = await client.post(CHAT, headers=team, json={
        "model": "fake", "messages": messages, "agoranet": {"max_price_out": 1}})
    assert capped.status_code == 402, capped.text
    unknown = await client.post(CHAT, headers=team, json={"model": "nope", "messages": messages})
    assert unknown.status_code == 404
    [node] = service.directory.nodes.values()  # an audit's verdict, as the auditor records it
    node.record_audit("fake", passed=False, answers=2, flagged=2, tokens=12)
    after = await scrape(client, owner)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    prompt = sum(u["prompt_tokens"] for u, _ in answers)
    completion = sum(u["completion_tokens"] for u, _ in answers)
    amount = sum(s["amount"] for _, s in answers)
    assert completion == 4 + 6 and amount == prompt * 1 + completion * 3 > 0
    assert moved("agoranet_gateway_prompt_tokens_total", model="fake") == prompt
    assert moved("agoranet_gateway_completion_tokens_total", model="fake") == completion
    assert moved("agoranet_gateway_spent_base_units_total") == amount
    assert moved("agoranet_gateway_spent_base_units_total", model="fake", outcome="ok") == amount
    assert service.spend.total() - spent_before == amount  # the spend log agrees
    assert after.value("agoranet_gateway_budget_spent_base_units") == service.budget.spent
    assert moved("agoranet_gateway_requests_total", model="fake", outcome="ok") == 2
    assert moved("agoranet_gateway_requests_total", outcome="payment_required") == 1
    assert moved("agoranet_gateway_payment_required_total") == 1
    assert moved("agoranet_gateway_requests_total", model="-", outcome="client_error") == 1
    assert moved("agoranet_gateway_node_ttft_seconds_count", model="fake") == 2
    assert moved("agoranet_gateway_failovers_total") == 0
    assert after.value("agoranet_gateway_requests_in_flight") == 0
    assert moved("agoranet_gateway_audits_total", node=node.url, verdict="failed") == 1
    assert moved("agoranet_gateway_audits_total", node=node.url, verdict="passed") == 0

    lines = [line for r in caplog.records if r.name == EVENTS_LOGGER
             if (line := json.loads(JsonFormatter().format(r)))["component"] == "gateway"]
    assert [(e["event"], e["outcome"]) for e in lines] == [
        ("request", "ok"), ("request", "ok"), ("request", "payment_required"),
        ("request", "client_error")]
    ids = [plain.json()["id"], summary["request_id"]]
    for line, (used, said), request_id in zip(lines, answers, ids, strict=False):
        assert (line["request_id"], line["model"], line["prompt_tokens"],
                line["completion_tokens"], line["amount"], line["nodes"]) == (
            request_id, "fake", used["prompt_tokens"], used["completion_tokens"],
            said["amount"], said["nodes"])
    assert lines[1]["stream"] is True and lines[1]["ttft_ms"] is not None
    rendered = json.dumps(lines)
    assert "harbour" not in rendered and all(s not in rendered for s in secrets.values())
