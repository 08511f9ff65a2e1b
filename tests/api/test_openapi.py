"""``GET /openapi.json`` on the node and the gateway: valid OpenAPI 3.1, every route served."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Route

from agoranet.agents.mcp_http import create_agent_gateway_app
from agoranet.api.openapi import OPENAPI_PATH, generic_routes, openapi_document
from agoranet.config import GatewaySettings, NodeSettings
from agoranet.gateway.app import build_service, create_gateway_app
from agoranet.gateway.keystore import KeyStore
from agoranet.node.app import create_app
from agoranet.tuning.adapter import Adapter
from agoranet.tuning.jobs import JobManager
from fakes import FakeEngine


class AdapterEngine(FakeEngine):
    """The fake engine, taking adapters (none ever stored): the node serves /v1/adapters."""

    def add_adapter(self, archive: bytes, max_bytes: int) -> Adapter:
        raise NotImplementedError

    def list_adapters(self) -> list[Adapter]:
        return []

    def accepts_adapters(self) -> bool:
        return True


def served(app: Starlette) -> set[tuple[str, str]]:
    """Each route's methods and path, a parameter's converter left out (``{id:path}``
    is documented as ``{id}``)."""
    return {(m, re.sub(r"{([^}:]+):[^}]*}", r"{\1}", r.path)) for r in app.routes
            if isinstance(r, Route) for m in r.methods or () if m != "HEAD"}


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, item in document["paths"].items() for m in item}


async def fetch(app: Starlette) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.get(OPENAPI_PATH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


async def test_node_documents_every_route_it_serves(tmp_path: Path) -> None:
    def never(*args: Any) -> Any:
        raise AssertionError("no job runs here")

    jobs = JobManager("fake", tmp_path / "jobs", never, never)
    app = create_app(AdapterEngine(), NodeSettings(), jobs)  # type: ignore[arg-type]
    try:
        document = await fetch(app)
    finally:
        jobs.close()
    validate(document)  # type: ignore[arg-type]
    assert document["openapi"] == "3.1.0"
    assert documented(document) == served(app)
    assert len(served(app)) >= 16  # inference, adapters, files, fine-tuning, offer, openapi
    assert generic_routes(app.routes) == []  # every one is described, none generic
    chat = document["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(request["required"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    offer = document["paths"]["/.well-known/agoranet"]["get"]["responses"]["200"]
    assert offer["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Offer"}
    assert "402" not in chat["responses"]  # an unpaid node takes no payment
    assert document["paths"]["/v1/files/{file_id}"]["get"]["parameters"][0]["name"] == "file_id"


@pytest.mark.parametrize("with_mcp", [False, True], ids=["gateway", "gateway+mcp"])
async def test_gateway_documents_every_route_and_its_policy_field(
        tmp_path: Path, with_mcp: bool) -> None:
    """The gateway documents /mcp exactly when the agents' MCP endpoint is mounted on it."""
    service = build_service(GatewaySettings(spend_log=tmp_path / "spend.sqlite"))
    app = (create_agent_gateway_app if with_mcp else create_gateway_app)(service)
    try:
        document = await fetch(app)
    finally:
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()
    validate(document)  # type: ignore[arg-type]
    assert documented(document) == served(app)
    assert generic_routes(app.routes) == []
    schemas = document["components"]["schemas"]
    chat = document["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    policy = schemas[ref.rsplit("/", 1)[-1]]["properties"]["agoranet"]
    assert policy["anyOf"][0] == {"$ref": "#/components/schemas/Policy"}
    assert "prefer" in schemas["Policy"]["properties"]
    assert "security" not in chat  # an open gateway takes no key
    assert ("/mcp" in document["paths"]) is with_mcp
    metrics = document["paths"]["/metrics"]["get"]
    assert "security" not in metrics and "401" not in metrics["responses"]  # open, as served


async def test_a_keyed_gateway_documents_its_key_routes_and_that_keys_are_needed(
        tmp_path: Path) -> None:
    service = build_service(GatewaySettings(spend_log=tmp_path / "spend.sqlite"))
    keys = KeyStore(tmp_path / "keys.sqlite")
    app = create_gateway_app(service, keys=keys)
    try:
        document = await fetch(app)
    finally:
        keys.close()
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()
    validate(document)  # type: ignore[arg-type]
    assert documented(document) == served(app)
    assert generic_routes(app.routes) == []
    assert "security" in document["paths"]["/metrics"]["get"]  # the owner's key
    assert {p for p in document["paths"] if p.startswith("/agoranet/keys")} == {
        "/agoranet/keys", "/agoranet/keys/{name}", "/agoranet/keys/{name}/top_up",
        "/agoranet/keys/{name}/rotate", "/agoranet/keys/{name}/revoke"}
    assert document["paths"]["/v1/chat/completions"]["post"]["security"] == [{"bearer": []}]
    assert document["paths"]["/v1/models"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in document["paths"]["/health"]["get"]


def test_paid_paths_take_x402_and_answer_402() -> None:
    async def endpoint(request: object) -> None:
        raise AssertionError

    routes = [Route("/v1/chat/completions", endpoint, methods=["POST"]),
              Route("/v1/models", endpoint, methods=["GET"])]
    document = openapi_document(routes, title="t", version="1",
                                paid_paths=["/v1/chat/completions"])
    validate(document)  # type: ignore[arg-type]
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"x402": []}]
    assert "PAYMENT-REQUIRED" in chat["responses"]["402"]["headers"]
    assert document["components"]["securitySchemes"]["x402"]["name"] == "PAYMENT-SIGNATURE"
    assert "security" not in document["paths"]["/v1/models"]["get"]


def test_an_undescribed_route_is_listed_generically() -> None:
    async def endpoint(request: object) -> None:
        raise AssertionError

    routes = [Route("/v1/new/{thing:int}", endpoint, methods=["GET", "DELETE"])]
    assert generic_routes(routes) == [("DELETE", "/v1/new/{thing}"), ("GET", "/v1/new/{thing}")]
    document = openapi_document(routes, title="t", version="1")
    validate(document)  # type: ignore[arg-type]
    assert set(document["paths"]["/v1/new/{thing}"]) == {"get", "delete"}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/tokenize"])
async def test_request_schemas_come_from_the_wire_types(path: str) -> None:
    app = create_app(FakeEngine(), NodeSettings())  # type: ignore[arg-type]
    document = await fetch(app)
    body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    name = body["schema"]["$ref"].rsplit("/", 1)[-1]
    assert name in {"ChatCompletionRequest", "CompletionRequest", "TokenizeRequest"}
    assert "model" in document["components"]["schemas"][name]["properties"]


async def test_embeddings_are_documented_on_the_node_and_the_gateway(tmp_path: Path) -> None:
    """``/v1/embeddings``: OpenAI's request and answer on the node; on the gateway with its
    ``agoranet`` policy field."""
    node = await fetch(create_app(FakeEngine(), NodeSettings()))  # type: ignore[arg-type]
    validate(node)  # type: ignore[arg-type]
    post = node["paths"]["/v1/embeddings"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/EmbeddingRequest"}
    request = node["components"]["schemas"]["EmbeddingRequest"]
    assert {"model", "input"} <= set(request["required"])
    assert {"encoding_format", "dimensions"} <= set(request["properties"])
    answer = post["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/EmbeddingList"}
    assert "/v1/embeddings" in NodeSettings().paid_paths  # a paid node takes x402 for it
    service = build_service(GatewaySettings(spend_log=tmp_path / "spend.sqlite"))
    try:
        gateway = await fetch(create_gateway_app(service))
    finally:
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()
    validate(gateway)  # type: ignore[arg-type]
    ref = gateway["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["$ref"]
    policy = gateway["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]["agoranet"]
    assert policy["anyOf"][0] == {"$ref": "#/components/schemas/Policy"}
