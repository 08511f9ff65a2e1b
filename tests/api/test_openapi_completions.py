"""The gateway's OpenAPI document: text completions with the gateway's policy field, and
the Responses routes with their own request, response, event and deletion schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from openapi_spec_validator import validate

from agoranet.api.openapi import OPENAPI_PATH
from agoranet.config import GatewaySettings
from agoranet.gateway.app import build_service, create_gateway_app


async def _document(tmp_path: Path) -> dict[str, Any]:
    service = build_service(GatewaySettings(spend_log=tmp_path / "spend.sqlite"))
    app = create_gateway_app(service)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.get(OPENAPI_PATH)
    finally:
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    validate(document)  # type: ignore[arg-type]
    return document


def _schema(document: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][ref["$ref"].rsplit("/", 1)[-1]]
    return found


async def test_text_completions_are_documented_with_the_policy_field(
        tmp_path: Path) -> None:
    document = await _document(tmp_path)
    paths = document["paths"]
    text = paths["/v1/completions"]["post"]
    body = _schema(document, text["requestBody"]["content"]["application/json"]["schema"])
    assert {"model", "prompt"} <= set(body["properties"])
    assert body["properties"]["agoranet"]["anyOf"][0] == {"$ref": "#/components/schemas/Policy"}
    answer = text["responses"]["200"]["content"]
    assert _schema(document, answer["application/json"]["schema"])["title"] == "Completion"
    assert "text/event-stream" in answer


async def test_the_responses_routes_have_their_own_schemas(tmp_path: Path) -> None:
    document = await _document(tmp_path)
    paths = document["paths"]
    create = paths["/v1/responses"]["post"]
    request = _schema(document, create["requestBody"]["content"]["application/json"]["schema"])
    assert {"model", "input"} <= set(request["required"])
    assert {"instructions", "previous_response_id", "tools", "text", "include",
            "max_output_tokens", "stream", "store"} <= set(request["properties"])
    assert request["properties"]["agoranet"]["anyOf"][0] == {
        "$ref": "#/components/schemas/Policy"}
    created = create["responses"]["200"]["content"]
    response = _schema(document, created["application/json"]["schema"])
    assert {"id", "status", "output", "model"} <= set(response["required"])
    assert "usage" in response["properties"]
    assert created["text/event-stream"]["schema"]["x-event"] == {
        "$ref": "#/components/schemas/ResponseStreamEvent"}
    stored = paths["/v1/responses/{response_id}"]
    assert stored["get"]["responses"]["200"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/ResponseObject"}
    deleted = _schema(document, stored["delete"]["responses"]["200"]["content"][
        "application/json"]["schema"])
    assert {"id", "object", "deleted"} <= set(deleted["properties"])
