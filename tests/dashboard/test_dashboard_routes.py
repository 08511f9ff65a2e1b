"""Issue #19: the dashboards' pages and data endpoints are their owner's alone.

In process (a fake engine, no chain): without the secret every page and data endpoint
answers 401 (a buyer's gateway key is no owner key, the gateway's owner key no node's
operator secret), the login form sets an HttpOnly session cookie, the assets are packaged
(no CDN), and the data reflects a request made through the gateway.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agoranet.api.secret_gate import COOKIE, load_or_create_secret
from agoranet.config import GatewaySettings, NodeSettings
from agoranet.dashboard import NodeView, mount_gateway_dashboard, mount_node_dashboard
from agoranet.dashboard.pages import ASSETS, asset
from agoranet.errors import ConfigError
from agoranet.gateway.app import build_service, create_gateway_app
from agoranet.gateway.keystore import OWNER, KeyStore
from agoranet.node.app import create_app
from fakes import FakeEngine
from helpers import served

DATA = "/agoranet/dashboard/data.json"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    node_app = create_app(FakeEngine(), NodeSettings(fine_tuning=False, free=True))
    async with served(node_app) as root:
        settings = GatewaySettings(nodes=[f"{root}/v1"], budget=100,
                                   spend_log=tmp_path / "spend.sqlite")
        service = build_service(settings)
        await service.directory.refresh()
        keys = KeyStore(tmp_path / "keys.sqlite")
        secrets = {OWNER: keys.create(OWNER, parent=None, budget=None).secret,
                   "agent": keys.create("agent", parent=OWNER, budget=50).secret}
        app = create_gateway_app(service, keys=keys)
        mount_gateway_dashboard(app, service, keys, settings.spend_log_path())
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     timeout=30) as client:
            yield client, secrets
        keys.close()
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_gateway_dashboard_is_the_owners(
        gateway: tuple[httpx.AsyncClient, dict[str, str]]) -> None:
    client, secrets = gateway
    for path in ("/", DATA, "/agoranet/dashboard/channels.json"):
        for headers in ({}, _bearer("agn-not-a-key-at-all"), _bearer(secrets["agent"])):
            reply = await client.get(path, headers=headers)
            assert reply.status_code == 401, (path, headers, reply.text)
            assert secrets["agent"] not in reply.text
    denied = await client.get(DATA)
    assert denied.json()["error"]["type"] == "authentication_error"
    browser = await client.get("/", headers={"accept": "text/html,application/xhtml+xml"})
    assert browser.status_code == 401 and "log in" in browser.text  # the login form
    program = await client.get("/")  # a program (no HTML accepted) gets OpenAI's error JSON
    assert program.json()["error"]["type"] == "authentication_error"
    page = await client.get("/", headers=_bearer(secrets[OWNER]))
    assert page.status_code == 200 and "spend-chart" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


async def test_gateway_dashboard_shows_a_request(
        gateway: tuple[httpx.AsyncClient, dict[str, str]]) -> None:
    client, secrets = gateway
    prompt = "a prompt that must never show on the dashboard"
    reply = await client.post("/v1/chat/completions", headers=_bearer(secrets["agent"]), json={
        "model": "fake", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    data = await client.get(DATA, headers=_bearer(secrets[OWNER]))
    assert data.status_code == 200
    body = data.json()
    assert [r["key"] for r in body["requests"]] == ["agent"]
    assert [hop["outcome"] for hop in body["requests"][0]["path"]] == ["ok"]
    assert len(body["nodes"]) == 1 and body["nodes"][0]["successes"] == 1
    assert {t["name"] for t in body["totals"]["key"]} == {"agent"}
    assert prompt not in data.text and secrets["agent"] not in data.text
    assert (await client.get("/agoranet/dashboard/channels.json",
                             headers=_bearer(secrets[OWNER]))).json() == []  # a free node


async def test_login_form_sets_an_httponly_session(
        gateway: tuple[httpx.AsyncClient, dict[str, str]]) -> None:
    client, secrets = gateway
    assert (await client.get("/login")).status_code == 200
    wrong = await client.post("/login", data={"secret": secrets["agent"]})
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    good = await client.post("/login", data={"secret": secrets[OWNER]})
    assert good.status_code == 303
    cookie = good.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert secrets[OWNER] not in cookie
    assert (await client.get(DATA)).status_code == 200  # the client keeps the cookie
    out = await client.post("/logout")
    assert out.status_code == 303
    client.cookies.clear()
    assert (await client.get(DATA)).status_code == 401


async def test_node_dashboard_needs_the_operator_secret(tmp_path: Path) -> None:
    engine = FakeEngine()
    app = create_app(engine, NodeSettings(fine_tuning=False, free=True))  # type: ignore[arg-type]
    secret = load_or_create_secret(tmp_path / "operator.secret")
    mount_node_dashboard(app, NodeView(engine), secret)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        for headers in ({}, _bearer("ops-wrong-secret-of-some-length")):
            assert (await client.get("/", headers=headers)).status_code == 401
            assert (await client.get(DATA, headers=headers)).status_code == 401
        data = await client.get(DATA, headers=_bearer(secret))
        assert data.status_code == 200
        body = data.json()
        assert body["earnings"] == {"channels": [], "totals": None}  # a free node
        assert body["load"]["now"]["active"] == 0
        assert secret not in data.text
        page = await client.get("/", headers=_bearer(secret))
        assert page.status_code == 200 and "earnings-chart" in page.text
        script = await client.get("/agoranet/dashboard/static/chart.umd.min.js")
        assert script.status_code == 200 and "Chart.js v4" in script.text
        assert (await client.get("/agoranet/dashboard/static/..%2Fpages.py")).status_code == 404
        # the paid routes are untouched
        assert (await client.get("/v1/models")).status_code == 200


def test_operator_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "node" / "operator.secret"
    first = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first and len(first) > 32
    path.write_text("short\n")
    with pytest.raises(ConfigError):
        load_or_create_secret(path)
    assert NodeSettings(ledger_path=tmp_path / "l.sqlite").operator_secret_path() == \
        tmp_path / "operator.secret"


def test_assets_are_packaged_and_local() -> None:
    for name in ASSETS:
        assert asset(name), name
    for page in ("gateway.html", "node.html", "login.html"):
        html = asset(page).decode()
        assert "http://" not in html and "https://" not in html  # no CDN: runs offline
    assert b"MIT" in asset("chart.js-LICENSE.md")


async def test_an_open_gateways_dashboard_is_open(tmp_path: Path) -> None:
    """An ``--open`` gateway has no keys (any local process may spend): nor does its page."""
    settings = GatewaySettings(nodes=[], spend_log=tmp_path / "spend.sqlite")
    service = build_service(settings)
    app = create_gateway_app(service)
    mount_gateway_dashboard(app, service, None, settings.spend_log_path())
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            assert (await client.get("/")).status_code == 200
            body = (await client.get(DATA)).json()
            assert body["requests"] == [] and body["spend"]["buckets"] == []
    finally:
        await service.client.aclose()
        service.spend.close()
        if service.directory.reputation is not None:
            service.directory.reputation.close()
