"""``/agoranet/tools`` on a gateway built with ``--tools``: keyed, validated, documented.

- Both routes need a key on a keyed gateway (401 in OpenAI's error JSON without one).
- A call's body is checked before anything is bought: unknown fields, a bad name, non-
  object arguments or a bad schema hash are 400s naming the field; an unknown tool 404.
- ``/openapi.json`` documents both routes (bearer on a keyed gateway).
- A gateway without ``--tools`` or a registry serves neither.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette

from agoranet.api.openapi import generic_routes
from agoranet.config import GatewaySettings
from agoranet.gateway.app import build_service, create_gateway_app
from agoranet.gateway.keystore import KeyStore
from agoranet.gateway.service import GatewayService


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Starlette, GatewayService, str]]:
    service = build_service(GatewaySettings(spend_log=tmp_path / "spend.sqlite",
                                            tools=["http://seller.test"]))
    keys = KeyStore(tmp_path / "keys.sqlite")
    owner = keys.create("owner", parent=None, budget=None).secret
    app = create_gateway_app(service, keys=keys)
    try:
        yield app, service, owner
    finally:
        keys.close()
        await service.aclose()


async def _ask(app: Starlette, method: str, path: str, key: str = "",
               **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as client:
        return await client.request(method, path, headers=headers, **kw)


async def test_a_key_is_needed(gateway: tuple[Starlette, GatewayService, str]) -> None:
    app, _, _ = gateway
    for method, path in (("GET", "/agoranet/tools"), ("POST", "/agoranet/tools/call")):
        reply = await _ask(app, method, path, json={"name": "echo"})
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(("body", "param"), [
    ({"name": "echo", "price": 5}, "price"),
    ({"name": "has space"}, "name"),
    ({"arguments": {}}, "name"),
    ({"name": "echo", "arguments": ["x"]}, "arguments"),
    ({"name": "echo", "schema_sha256": "XYZ"}, "schema_sha256"),
])
async def test_a_bad_call_is_a_400(body: dict[str, Any], param: str,
                                   gateway: tuple[Starlette, GatewayService, str]) -> None:
    app, _, owner = gateway
    reply = await _ask(app, "POST", "/agoranet/tools/call", owner, json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


async def test_an_unknown_tool_is_a_404(gateway: tuple[Starlette, GatewayService, str]) -> None:
    app, service, owner = gateway
    assert (await _ask(app, "GET", "/agoranet/tools", owner)).json() == {
        "object": "list", "data": []}
    reply = await _ask(app, "POST", "/agoranet/tools/call", owner,
                       json={"name": "echo", "arguments": {}})
    assert reply.status_code == 404 and "no seller" in reply.json()["error"]["message"]
    assert service.spend.rows() == []


async def test_the_routes_are_documented(gateway: tuple[Starlette, GatewayService, str]) -> None:
    app, _, _ = gateway
    document = (await _ask(app, "GET", "/openapi.json")).json()
    validate(document)
    assert generic_routes(app.routes) == []
    assert document["paths"]["/agoranet/tools"]["get"]["security"] == [{"bearer": []}]
    assert "schema_sha256" in str(document["paths"]["/agoranet/tools/call"]["post"])


async def test_no_tools_no_routes(tmp_path: Path) -> None:
    service = build_service(GatewaySettings(spend_log=tmp_path / "spend.sqlite"))
    try:
        assert service.tools is None
        app = create_gateway_app(service)
        assert (await _ask(app, "GET", "/agoranet/tools")).status_code == 404
    finally:
        await service.aclose()
