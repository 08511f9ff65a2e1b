"""The gateway's tool directory and market listing, over in-memory sellers.

- A seller's signed offer is accepted and its tools listed; the same tool (name and
  schema hash) from two sellers is one listing, cheapest seller first; the same name
  with other schemas is another listing (and another MCP name).
- Forged and tampered offers are refused with a log line and never listed: changed
  after signing, signed by another key than the payee, registered under another hash
  or by another address, served for another URL, or stating a schema hash that is not
  its schemas'.
- Registry entries of tool servers (``…/tools``) go to the tool directory, never to the
  node directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.agents.mcp_market import market_tools, mcp_names
from agoranet.gateway.budget import Budget
from agoranet.gateway.directory import NodeDirectory
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.tool_buying import ToolMarket
from agoranet.gateway.tool_directory import ToolDirectory
from agoranet.registry.offer import PaymentOffer
from agoranet.registry.onchain import RegistryEntry, offer_hash
from agoranet.registry.signing import sign_offer
from agoranet.registry.tool_offer import ToolOffer, build_tool_offer, registry_url

ECHO: dict[str, Any] = {
    "name": "echo", "description": "Says it back.",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
    "output_schema": {"type": "object", "properties": {"result": {"type": "string"}}},
    "price": 1500}


def _payment(account: LocalAccount) -> PaymentOffer:
    return PaymentOffer(schemes=["batch-settlement", "exact"], network="eip155:31337",
                        asset="0x" + "11" * 20, pay_to=account.address,
                        receiver_authorizer="0x" + "22" * 20, withdraw_delay=900,
                        min_deposit=0, token_name="USD Coin", token_version="2")


def _offer(root: str, account: LocalAccount, *tools: dict[str, Any],
           signer: LocalAccount | None = None) -> ToolOffer:
    offer = build_tool_offer(root, list(tools) or [ECHO], _payment(account))
    return sign_offer(offer, signer or account)


class _Sellers:
    """Serves each root's offer (as raw JSON, so a tampered one goes out as is)."""

    def __init__(self) -> None:
        self.offers: dict[str, str] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        root = f"{request.url.scheme}://{request.url.host}"
        if request.url.path == "/.well-known/agoranet" and root in self.offers:
            return httpx.Response(200, content=self.offers[root])
        return httpx.Response(404)


def _run(sellers: _Sellers, urls: list[str],
         registered: list[RegistryEntry] | None = None) -> ToolDirectory:
    async def go() -> ToolDirectory:
        client = httpx.AsyncClient(transport=httpx.MockTransport(sellers.handle))
        directory = ToolDirectory(urls, client, registry=(lambda: registered or [])
                                  if registered is not None else None)
        await directory.refresh()
        await client.aclose()
        return directory
    return asyncio.run(go())


def test_same_tool_from_two_sellers_is_one_listing(tmp_path: Any) -> None:
    a, b, c = Account.create(), Account.create(), Account.create()
    sellers = _Sellers()
    sellers.offers["http://a.test"] = _offer("http://a.test", a, {**ECHO, "price": 2000}
                                             ).model_dump_json()
    sellers.offers["http://b.test"] = _offer("http://b.test", b, ECHO).model_dump_json()
    other = {**ECHO, "input_schema": {"type": "object",
                                      "properties": {"text": {"type": "integer"}}}}
    sellers.offers["http://c.test"] = _offer("http://c.test", c, other, {
        "name": "count", "description": "Counts.", "input_schema": {"type": "object"},
        "price": {"varies": True, "description": "7 per character"}}).model_dump_json()
    directory = _run(sellers, ["http://a.test", "http://b.test/", "http://c.test"])
    assert all(s.offer is not None for s in directory.sellers.values()), \
        [s.offer_error for s in directory.sellers.values()]
    spend = SpendLog(tmp_path / "spend.sqlite")
    market = ToolMarket(directory, httpx.AsyncClient(), Budget(None), spend)
    listing = market.listing()
    echoes = [g for g in listing if g.name == "echo"]
    assert len(echoes) == 2
    shared = next(g for g in echoes if len(g.sellers) == 2)
    assert [s.root for s, _ in shared.sellers] == ["http://b.test", "http://a.test"]
    assert shared.tool.price.amount == 1500  # the cheapest seller's
    assert market.find("echo").schema_sha256 == shared.schema_sha256  # most sellers first
    view = market.view()
    assert {(v["name"], len(v["sellers"])) for v in view} == {("echo", 2), ("echo", 1),
                                                              ("count", 1)}
    names = mcp_names(view)
    assert names["tool__echo"]["schema_sha256"] == shared.schema_sha256
    assert f"tool__echo__{next(g for g in echoes if g is not shared).schema_sha256[:8]}" \
        in names
    tools = {t.name: t for t in market_tools(view)}
    assert "1500 base units (0.001500) per call" in (tools["tool__echo"].description or "")
    assert "2 sellers" in (tools["tool__echo"].description or "")
    assert "set by the arguments: 7 per character" in (tools["tool__count"].description or "")
    assert tools["tool__echo"].input_schema == ECHO["input_schema"]
    spend.close()


@pytest.mark.parametrize("fault", ["tampered", "forged", "foreign_url", "bad_schema_hash",
                                   "registered_hash", "registered_signer", "unsigned"])
def test_forged_or_tampered_offers_are_refused(fault: str, caplog: pytest.LogCaptureFixture,
                                               tmp_path: Any) -> None:
    seller, forger = Account.create(), Account.create()
    root = "http://s.test"
    good = _offer(root, seller)
    served = good.model_dump(mode="json")
    registered = None
    if fault == "tampered":
        served["tools"][0]["price"]["amount"] = 1
    elif fault == "forged":  # a valid signature by someone else, paid to the seller
        served = _offer(root, seller, signer=forger).model_dump(mode="json")
    elif fault == "foreign_url":
        served = _offer("http://elsewhere.test", seller).model_dump(mode="json")
    elif fault == "bad_schema_hash":
        served["tools"][0]["schema_sha256"] = "ab" * 32
    elif fault == "registered_hash":
        registered = [RegistryEntry(seller.address, registry_url(root), "0x" + "00" * 32, 1)]
    elif fault == "registered_signer":
        registered = [RegistryEntry(forger.address, registry_url(root), offer_hash(good), 1)]
    else:
        served.pop("signature")
    sellers = _Sellers()
    sellers.offers[root] = json.dumps(served)
    caplog.set_level(logging.WARNING, "agoranet.gateway.tool_directory")
    directory = _run(sellers, [] if registered else [root], registered)
    found = directory.sellers[root]
    assert found.offer is None
    assert found.offer_error is not None and found.offer_error.startswith("refused")
    assert any("tool offer refused" in r.getMessage() for r in caplog.records)
    spend = SpendLog(tmp_path / "spend.sqlite")
    assert ToolMarket(directory, httpx.AsyncClient(), Budget(None), spend).view() == []
    spend.close()


def test_a_registered_offer_that_matches_is_accepted() -> None:
    seller = Account.create()
    root = "http://s.test"
    good = _offer(root, seller)
    sellers = _Sellers()
    sellers.offers[root] = good.model_dump_json()
    entry = RegistryEntry(seller.address, registry_url(root), offer_hash(good), 1)
    directory = _run(sellers, [], [entry])
    assert directory.sellers[root].offer == good
    assert directory.sellers[root].identity == seller.address


def test_tool_servers_in_the_registry_are_not_nodes() -> None:
    entries = [RegistryEntry(Account.create().address, "http://t.test/tools", "0x" + "11" * 32,
                             1),
               RegistryEntry(Account.create().address, "http://n.test/v1", "0x" + "22" * 32, 1)]

    async def go() -> list[str]:
        client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(404)))
        directory = NodeDirectory([], client, registry=lambda: entries)
        await directory.refresh()
        await client.aclose()
        return list(directory.nodes)
    assert asyncio.run(go()) == ["http://n.test/v1"]
