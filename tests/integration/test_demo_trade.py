"""Issue #20 item 5: the demo's "agents trade" step, with real processes on the dev chain.

A paid node (registered on chain) and a buyer's gateway reading the registry stand for
the demo's network; the step then starts the seller agent's own gateway (its wallet,
its deposit), ``agoranet tools serve agoranet.tools.examples.summarize:from_env`` paid
to the same wallet and registered on chain, and has the buyer agent call
``tool__summarize`` on the buyer gateway's MCP server with the official ``mcp`` client.
Each call is paid on two hops (buyer's gateway → tool seller, seller's gateway → node);
for every channel the payer's receipts equal the payee's ledger, what was claimed on
chain is what was receipted, and the payer's spend log records at least that much; the
tool's price covers the tokens it bought; both keys spent exactly their receipts.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from rich.console import Console

from agoranet.chain.devchain import DevChain
from agoranet.demo.network_step import (
    PASSWORD,
    DemoMarket,
    environment,
    keystore_for,
    wait_for_nodes,
)
from agoranet.demo.trade_step import RESEARCHER_BUDGET, TEXTS, trade_step
from agoranet.gateway.keystore import KeyStore
from agoranet.node.launcher import running_command, running_node
from agoranet.payments.wallet import PASSWORD_ENV_VAR
from agoranet.registry.offer import Offer
from agoranet.registry.onchain import offer_hash, registry_at
from agoranet.tools.examples.summarize import SummarizeSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NODE, BUYER = 3, 6
PRICE_IN, PRICE_OUT = 4_000_000, 12_000_000  # the tool's default caps: the node qualifies


@pytest.fixture
def market(chain: DevChain, tiny_model: Path, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[DemoMarket]:
    monkeypatch.setenv(PASSWORD_ENV_VAR, PASSWORD)
    rpc = chain.rpc_url
    ledger = tmp_path / "node.ledger.sqlite"
    with running_node([
            "--model", str(tiny_model), "--served-model-name", "tiny",
            "--price-in", str(PRICE_IN), "--price-out", str(PRICE_OUT), "--rpc-url", rpc,
            "--keystore", str(keystore_for(chain, NODE, tmp_path / "node.json")),
            "--ledger", str(ledger), "--settle-interval", "0.5", "--claim-max-age", "1",
            "--no-fine-tuning", "--no-adapters"]) as node:
        offer = Offer.model_validate_json(
            httpx.get(node.removesuffix("/v1") + "/.well-known/agoranet", timeout=10).content)
        registry_at(rpc).register(Account.from_key(chain.private_keys[NODE]), node,
                                  offer_hash(offer))
        with environment({"AGORANET_GATEWAY_REFRESH_S": "1"}), running_command([
                "gateway", "--registry-rpc-url", rpc, "--rpc-url", rpc, "--keystore",
                str(keystore_for(chain, BUYER, tmp_path / "buyer.json")), "--deposit",
                "200000", "--budget", "100000", "--spend-log",
                str(tmp_path / "gateway" / "spend.sqlite")],
                output=tmp_path / "gateway.log") as gateway:
            wait_for_nodes(gateway, 1)
            yield DemoMarket(chain, gateway.removesuffix("/v1"),
                             (tmp_path / "gateway" / "owner.key").read_text().strip(),
                             tmp_path / "gateway" / "spend.sqlite", {"steady": node},
                             {"steady": ledger}, tmp_path)


def test_a_buyer_agent_pays_a_tool_that_pays_a_node_and_the_books_agree(
        market: DemoMarket) -> None:
    out = io.StringIO()
    started = time.perf_counter()
    scene = trade_step(market, Console(file=out, width=80, force_terminal=False))
    text = out.getvalue()
    print(text, f"the step took {time.perf_counter() - started:.1f} s")  # informative only
    assert all(len(line) <= 80 for line in text.splitlines()), text
    flat = " ".join(text.split())
    assert "every channel's receipts, ledger, spend log and claims agree" in flat
    assert "finds tool__summarize on its gateway's MCP server" in flat

    tool_hops = [h for h in scene.hops if h.payee == "summarize"]
    node_hops = [h for h in scene.hops if h.payer == "summarize"]
    assert [h.call for h in tool_hops] == [1, 2] and {h.call for h in node_hops} == {1, 2}
    assert {h.payee for h in node_hops} == {"steady"}
    settings = SummarizeSettings("", "")
    for hop, sent in zip(tool_hops, TEXTS, strict=True):
        # the buyer paid the price quoted for this text, and was receipted exactly that
        assert hop.price == hop.receipt == settings.price({"text": sent})
        tokens = sum(h.receipt for h in node_hops if h.call == hop.call)
        # the seller's tokens cost no more than it priced them at, below its price
        assert 0 < tokens <= settings.inference_bound(sent) < hop.price
    for hop in node_hops:
        assert hop.price == hop.receipt > 0

    channels = {(s.payer, s.payee): s for s in scene.settlements}
    assert set(channels) == {("researcher", "summarize"), ("summarize", "steady")}
    for s in scene.settlements:
        # both sides hold the same receipts; all of it claimed on chain; spend >= claimed
        assert s.receipted == s.ledger == s.claimed <= s.spend, s
        assert s.holds
    assert channels["researcher", "summarize"].receipted == sum(h.receipt for h in tool_hops)
    assert channels["summarize", "steady"].receipted == sum(h.receipt for h in node_hops)

    # each agent's key was charged exactly its receipts, within its budget
    keys = httpx.get(f"{market.gateway}/agoranet/keys", timeout=30, headers={
        "Authorization": f"Bearer {market.owner_key}"}).json()["data"]
    researcher = next(k for k in keys if k["name"] == "researcher")
    assert researcher["spent"] == sum(h.receipt for h in tool_hops) <= RESEARCHER_BUDGET
    assert researcher["reserved"] == 0
    store = KeyStore(market.work / "trade" / "gateway" / "keys.sqlite")
    try:
        tool_key = next(k for k in store.subtree() if k.name == "summarize")
    finally:
        store.close()
    assert tool_key.spent == sum(h.receipt for h in node_hops)
