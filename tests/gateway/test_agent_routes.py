"""The gateway's routes for agents (``/agoranet/budget``, ``/agoranet/models``,
``/agoranet/fine_tuning/jobs``) and ``/mcp``'s key check, in process over a fake node:
bad input is a plain 4xx in OpenAI's error JSON, never a 5xx; a key sees its own budget
chain and models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.agents.mcp_http import create_agent_gateway_app
from agoranet.config import GatewaySettings, NodeSettings
from agoranet.gateway.app import build_service
from agoranet.gateway.keystore import OWNER, KeyStore
from agoranet.gateway.service import GatewayService
from agoranet.node.app import create_app
from agoranet.registry.offer import FineTuningTerms, PaymentOffer
from fakes import FakeEngine
from helpers import served


@dataclass
class Setup:
    client: httpx.AsyncClient
    service: GatewayService
    keys: KeyStore | None
    secrets: dict[str, str]

    async def call(self, method: str, path: str, key: str | None = None,
                   **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.secrets[key]}"} if key else {}
        return await self.client.request(method, path, headers=headers, **kw)


async def _gateway(tmp_path: Path, *, keyed: bool) -> AsyncIterator[Setup]:
    node_app = create_app(FakeEngine(), NodeSettings(fine_tuning=False, free=True))
    async with served(node_app) as root:
        service = build_service(GatewaySettings(nodes=[f"{root}/v1"], budget=100,
                                                spend_log=tmp_path / "spend.sqlite"))
        await service.directory.refresh()
        keys, secrets = None, {}
        if keyed:
            keys = KeyStore(tmp_path / "keys.sqlite")
            secrets[OWNER] = keys.create(OWNER, parent=None, budget=None).secret
            secrets["team"] = keys.create("team", parent=OWNER, budget=10).secret
            secrets["agent"] = keys.create("agent", parent="team", budget=7,
                                           models=["other*"]).secret
            secrets["peer"] = keys.create("peer", parent="team", budget=7).secret
        app = create_agent_gateway_app(service, keys=keys)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     timeout=30) as client:
            yield Setup(client, service, keys, secrets)
        if keys is not None:
            keys.close()
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()


@pytest.fixture
async def open_gateway(tmp_path: Path) -> AsyncIterator[Setup]:
    async for setup in _gateway(tmp_path, keyed=False):
        yield setup


@pytest.fixture
async def keyed_gateway(tmp_path: Path) -> AsyncIterator[Setup]:
    async for setup in _gateway(tmp_path, keyed=True):
        yield setup


def _plain(reply: httpx.Response, status: int, words: str) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert words in error["message"] and "Traceback" not in reply.text, error


async def test_budget_and_models_on_an_open_gateway(open_gateway: Setup) -> None:
    budget = (await open_gateway.call("GET", "/agoranet/budget")).json()
    assert (budget["key"], budget["budget"], budget["spent"], budget["remaining"],
            budget["available"], budget["limited_by"]) == (None, 100, 0, 100, 100, "gateway")
    [model] = (await open_gateway.call("GET", "/agoranet/models")).json()["data"]
    assert (model["id"], model["nodes"], model["context_length"]) == ("fake", 1, 64)
    assert "fine_tuning" not in model["capabilities"]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({}, 400, "'model' must be"),
    ({"model": "fake", "examples": [], "rate": 1}, 400, "unknown field(s): rate"),
    ({"model": "fake", "examples": "x"}, 400, "'examples' must be a list"),
    ({"model": "fake", "examples": []}, 400, "'examples' must be a list"),
    ({"model": "fake", "examples": [{"messages": "hi"}]}, 400, "example 1 must be"),
    ({"model": "fake", "examples": [{"messages": []}], "epochs": 0}, 400, "'epochs'"),
    ({"model": "fake", "examples": [{"messages": []}], "epochs": True}, 400, "'epochs'"),
    ({"model": "fake", "examples": [{"messages": []}], "seed": "x"}, 400, "'seed'"),
    ({"model": "fake", "examples": [{"messages": []}]}, 404, "no node on the network "
                                                             "fine-tunes 'fake'"),
])
async def test_bad_fine_tuning_requests_are_plain_4xx(
        open_gateway: Setup, body: dict[str, Any], status: int, words: str) -> None:
    _plain(await open_gateway.call("POST", "/agoranet/fine_tuning/jobs", json=body),
           status, words)


async def test_bad_job_lookups_are_plain_400s(open_gateway: Setup) -> None:
    path = "/agoranet/fine_tuning/jobs"
    _plain(await open_gateway.call("POST", path, content=b"{not json"), 400, "")
    _plain(await open_gateway.call("GET", f"{path}/ftjob-1"), 400, "?node=URL")
    _plain(await open_gateway.call("GET", f"{path}/ftjob-1",
                                   params={"node": "http://169.254.169.254/latest"}),
           400, "the gateway knows no node at")
    _plain(await open_gateway.call("GET", f"{path}/ftjob.1", params={"node": "x"}),
           400, "not a job id")


async def test_only_paid_trainers_are_refused_with_the_reason(open_gateway: Setup) -> None:
    # The node's offer, as a paid node that trains for a price would publish it.
    [node] = open_gateway.service.directory.nodes.values()
    assert node.offer is not None
    node.offer = node.offer.model_copy(update={
        "fine_tuning": FineTuningTerms(accepted=True, price_per_million_training_tokens=5),
        "payment": PaymentOffer(schemes=["batch-settlement"], network="eip155:1", asset="0x0",
                                pay_to="0x0", receiver_authorizer="0x0", withdraw_delay=1,
                                min_deposit=0, token_name="USDC", token_version="2")})
    [model] = (await open_gateway.call("GET", "/agoranet/models")).json()["data"]
    assert "fine_tuning" in model["capabilities"]
    assert "free_fine_tuning" not in model["capabilities"]
    _plain(await open_gateway.call("POST", "/agoranet/fine_tuning/jobs", json={
        "model": "fake", "examples": [{"messages": []}]}), 400,
        "this gateway has no wallet to pay them")


async def test_a_key_sees_its_chain_and_its_models(keyed_gateway: Setup) -> None:
    gw = keyed_gateway
    assert gw.keys is not None
    peer = gw.keys.get("peer")
    gw.keys.settle(gw.keys.reserve(peer.id, 6, "r1", "fake"), 6)  # 'team' has 4 left
    agent = (await gw.call("GET", "/agoranet/budget", "agent")).json()
    assert (agent["key"], agent["parent"], agent["budget"], agent["spent"],
            agent["remaining"]) == ("agent", "team", 7, 0, 7)
    assert (agent["available"], agent["limited_by"]) == (4, "team")
    owner = (await gw.call("GET", "/agoranet/budget", OWNER)).json()
    assert (owner["key"], owner["budget"], owner["spent"]) == (OWNER, None, 6)
    assert (owner["available"], owner["limited_by"]) == (100, "gateway")
    # 'agent' may use other* only: the fake model is not listed, nor trained for it.
    assert (await gw.call("GET", "/agoranet/models", "agent")).json()["data"] == []
    assert [m["id"] for m in (await gw.call("GET", "/agoranet/models", "peer")).json()[
        "data"]] == ["fake"]
    _plain(await gw.call("POST", "/agoranet/fine_tuning/jobs", "agent", json={
        "model": "fake", "examples": [{"messages": []}]}), 403, "may not use the model")
    for path in ("/agoranet/budget", "/agoranet/models"):
        _plain(await gw.call("GET", path), 401, "needs an API key")
    _plain(await gw.call("POST", "/mcp", json={"jsonrpc": "2.0", "id": 1,
                                               "method": "tools/list"}), 401,
           "needs an API key")
