"""A gateway key's tool limits: which tools, from which sellers, at what price a call.

In process: the tool market over in-memory sellers (``test_tool_buying``'s, which sign
real receipts) and a real key store. A key's policy may list the tools it may call
(``tools``, globs), the sellers it may pay (``tool_sellers``: root URL globs or
addresses) and cap a call's price (``max_tool_price``); as with models, each key of the
chain applies. What they rule out is a 403 (OpenAI's ``permission_error``) before
anything is reserved, signed or sent -- no spend row, no channel, the budget untouched
-- and the key's listing shows only what it may buy. Bad values are 400s, over the API
and in ``agoranet keys create``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from test_tool_buying import Market, Seller, build

from agoranet.cli.main import cli
from agoranet.errors import InvalidRequestError, PermissionDeniedError
from agoranet.gateway.key_routes import key_routes
from agoranet.gateway.keyaccess import KeyAccess, check_key_policy
from agoranet.gateway.keystore import KeyStore
from agoranet.gateway.policy import Policy
from agoranet.gateway.tool_limits import ToolLimits
from agoranet.payments import x402wire

__all__ = ["build"]  # the fixture, imported


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[KeyStore]:
    store = KeyStore(tmp_path / "keys.sqlite")
    store.create("owner", parent=None, budget=None)
    yield store
    store.close()


def _limits(keys: KeyStore, name: str, parent: str = "owner", **policy: Any) -> ToolLimits:
    keys.create(name, parent=parent, budget=100_000, policy=check_key_policy(policy))
    return KeyAccess(keys, keys.chain(keys.get(name).id)).tool_limits()


def _call(m: Market, limits: ToolLimits, name: str = "echo") -> dict[str, Any]:
    return asyncio.run(m.market.call(name, {"text": "hi"}, key="agent", limits=limits))


def _untouched(m: Market, *sellers: Seller) -> None:
    """Nothing reserved, paid, logged or opened; no seller asked anything."""
    assert all(not s.requests for s in sellers)
    assert m.rows() == [] and (m.budget.spent, m.budget.reserved) == (0, 0)
    assert m.payers.payers() == []


def test_a_tool_the_key_may_not_call_is_refused_before_anything(
        build: Callable[..., Market], keys: KeyStore) -> None:
    seller = Seller("s", 1000)
    m = build(seller, limit=10_000)
    limits = _limits(keys, "agent", tools=["count", "summar*"])
    with pytest.raises(PermissionDeniedError, match="may not call the tool 'echo'") as caught:
        _call(m, limits)
    assert caught.value.status_code == 403 and caught.value.error_type == "permission_error"
    _untouched(m, seller)
    assert m.market.view(limits) == []  # not listed for it either
    allowed = _limits(keys, "other", tools=["ec*"])
    assert _call(m, allowed)["cost"] == 1000


def test_only_the_sellers_the_key_may_pay_are_paid(
        build: Callable[..., Market], keys: KeyStore) -> None:
    cheap, dear = Seller("cheap", 1000), Seller("dear", 2000)
    m = build(cheap, dear, limit=10_000)
    by_url = _limits(keys, "agent", tool_sellers=["http://dear.*"])
    answer = _call(m, by_url)  # the cheapest is not one it may pay
    assert answer["seller"] == dear.root and answer["cost"] == 2000 and not cheap.requests
    [listed] = m.market.view(by_url)
    assert [s["url"] for s in listed["sellers"]] == [dear.root]
    by_address = _limits(keys, "agent2", tool_sellers=[cheap.account.address.lower()])
    assert _call(m, by_address)["seller"] == cheap.root
    nobody = _limits(keys, "agent3", tool_sellers=["http://elsewhere.test"])
    spent = m.budget.spent
    with pytest.raises(PermissionDeniedError, match="none of the sellers"):
        _call(m, nobody)
    assert m.budget.spent == spent and len(m.rows()) == 2


def test_a_price_above_the_key_s_cap_is_refused_before_anything(
        build: Callable[..., Market], keys: KeyStore) -> None:
    cheap, dear = Seller("cheap", 1000), Seller("dear", 2000)
    m = build(dear, cheap, limit=10_000)
    capped = _limits(keys, "agent", max_tool_price=999)
    with pytest.raises(PermissionDeniedError, match="1000 base units a call") as caught:
        _call(m, capped)
    assert "cap of 999" in caught.value.message
    _untouched(m, cheap, dear)
    assert m.market.view(capped) == []
    within = _limits(keys, "agent2", max_tool_price=1500)  # the cheap one only
    assert _call(m, within)["seller"] == cheap.root
    [listed] = m.market.view(within)
    assert [s["url"] for s in listed["sellers"]] == [cheap.root]


def test_a_quote_above_the_cap_is_not_paid(build: Callable[..., Market],
                                          keys: KeyStore) -> None:
    seller = Seller("s", {"varies": True, "max_amount": 100})
    m = build(seller, limit=10_000)
    seller.quote = 60
    with pytest.raises(PermissionDeniedError, match="would cost 60 base units"):
        _call(m, _limits(keys, "agent", max_tool_price=50))
    assert [x402wire.PAYMENT_SIGNATURE in r.headers for r in seller.requests] == [False]
    assert m.rows() == [] and (m.budget.spent, m.budget.reserved) == (0, 0)
    assert m.payers.payers() == []
    assert _call(m, _limits(keys, "agent2", max_tool_price=60))["cost"] == 60


def test_every_key_of_the_chain_applies(build: Callable[..., Market], keys: KeyStore) -> None:
    seller = Seller("s", 1000)
    m = build(seller, limit=10_000)
    _limits(keys, "team", tools=["echo"], max_tool_price=1000)
    child = _limits(keys, "agent", parent="team", tools=["*"], max_tool_price=5000)
    assert child.max_price == 1000 and not child.allows_tool("count")  # never wider
    assert child.allows_tool("echo") and _call(m, child)["cost"] == 1000
    narrower = _limits(keys, "small", parent="team", max_tool_price=10)
    with pytest.raises(PermissionDeniedError):
        _call(m, narrower)
    assert ToolLimits.of(keys.chain(keys.get("owner").id)) == ToolLimits("owner")  # no limits: all


def test_tool_fields_do_not_reach_the_routing_policy(keys: KeyStore) -> None:
    keys.create("agent", parent="owner", budget=10, policy=check_key_policy(
        {"tools": ["echo"], "max_tool_price": 5, "max_price_in": 7}))
    policy = KeyAccess(keys, keys.chain(keys.get("agent").id)).narrow(Policy())
    assert policy.max_price_in == 7


@pytest.mark.parametrize("policy", [
    {"tools": "echo"}, {"tools": []}, {"tools": [""]}, {"tools": [1]},
    {"tool_sellers": ["x" * 301]}, {"max_tool_price": -1}, {"max_tool_price": "5"},
    {"max_tool_price": True}, {"max_tool_price": 2**63},
])
def test_bad_tool_limits_are_a_400(policy: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_key_policy(policy)
    assert caught.value.status_code == 400 and caught.value.param == "policy"


def test_the_api_and_the_cli_set_them(tmp_path: Path, keys: KeyStore) -> None:
    owner = keys.reissue("owner")
    app = Starlette(routes=key_routes(keys))

    async def create(body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as client:
            return await client.post("/agoranet/keys", json=body,
                                     headers={"Authorization": f"Bearer {owner}"})

    made = asyncio.run(create({"name": "api", "budget": 10, "policy": {
        "tools": ["echo"], "tool_sellers": ["http://a.test"], "max_tool_price": 9}}))
    assert made.status_code == 201, made.text
    assert made.json()["policy"] == {"tools": ["echo"], "tool_sellers": ["http://a.test"],
                                     "max_tool_price": 9}
    bad = asyncio.run(create({"name": "bad", "budget": 10, "policy": {"max_tool_price": -1}}))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "policy"
    keys.close()
    result = CliRunner().invoke(cli, [
        "keys", "create", "cli", "--budget", "0.01", "--tools", "echo", "--tools", "sum*",
        "--tool-seller", "http://a.test", "--max-tool-price", "500",
        "--key-store", str(tmp_path / "keys.sqlite")])
    assert result.exit_code == 0, result.output
    store = KeyStore(tmp_path / "keys.sqlite")
    try:
        limits = ToolLimits.of(store.chain(store.get("cli").id))
    finally:
        store.close()
    assert limits == ToolLimits("cli", (("echo", "sum*"),), (("http://a.test",),), 500)


async def test_the_gateway_s_route_applies_the_calling_key_s_limits(tmp_path: Path) -> None:
    from agoranet.config import GatewaySettings
    from agoranet.gateway.app import build_service, create_gateway_app

    service = build_service(GatewaySettings(spend_log=tmp_path / "spend.sqlite",
                                            tools=["http://seller.test"]))
    store = KeyStore(tmp_path / "gw-keys.sqlite")
    store.create("owner", parent=None, budget=None)
    secret = store.create("agent", parent="owner", budget=10_000,
                          policy=check_key_policy({"tools": ["count"]})).secret
    app = create_gateway_app(service, keys=store)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as client:
            reply = await client.post("/agoranet/tools/call", json={
                "name": "echo", "arguments": {"text": "hi"}},
                headers={"Authorization": f"Bearer {secret}"})
        assert reply.status_code == 403, reply.text
        error = reply.json()["error"]
        assert error["type"] == "permission_error" and error["param"] == "name"
        assert "may not call the tool 'echo'" in error["message"]
        assert service.spend.rows() == [] and store.get("agent").spent == 0
    finally:
        store.close()
        await service.aclose()
