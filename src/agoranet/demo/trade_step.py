"""Demo step: agents trade. A buyer agent pays a second agent's tool, which pays a node.

The seller agent is a party of its own: its own wallet (a dev account), its own gateway
with its own deposit, and a key of that gateway for its ``summarize`` tool
(:mod:`agoranet.tools.examples.summarize`), which it sells with ``agoranet tools serve``
and registers on chain like a node. A second key on the buyer's gateway would not do:
the buyer's wallet would then pay the nodes for the seller's tokens as well as the tool's
price, which already covers them, and the seller's costs would not be its own.

The buyer's gateway (the demo's) finds the tool server in the registry and offers it on
its MCP server as ``tool__summarize``; the buyer agent "researcher", with a key of its
own, calls it there with the official ``mcp`` client. Each call crosses two hops, each
paid over a batch-settlement channel with a signed receipt: researcher's gateway →
tool seller (the tool's price), tool seller's gateway → node (the tokens). Once the
sellers' settlement loops have claimed, every channel's receipts, the seller's ledger,
the buyer's spend log and the chain are compared.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from rich.console import Console
from rich.table import Table

from agoranet.demo.network_step import (
    GATEWAY_REFRESH_S,
    DemoMarket,
    environment,
    keystore_for,
    wait_for_nodes,
)
from agoranet.errors import GatewayCallError
from agoranet.node.launcher import free_port, running_command
from agoranet.payments.amounts import format_amount

__all__ = ["RESEARCHER_BUDGET", "SELLER", "TEXTS", "Hop", "Settlement", "TradeScene",
           "trade_step"]

SELLER: Final = 8  # the dev account of the seller agent (tool server and its gateway)
SELLER_DEPOSIT: Final = 100_000  # what the seller's gateway deposits per node channel
TOOL_KEY_BUDGET: Final = 50_000  # the seller's key for its tool: what the tool may spend
RESEARCHER_BUDGET: Final = 30_000  # the buyer agent's key
TEXTS: Final = (
    "Maya went to the market in the morning. She bought apples, bread and a small fish, "
    "then walked home by the river and cooked dinner for Omar.",
    "The cat sat in the garden all afternoon. When the rain came it ran to the beach "
    "house, where Omar gave it milk and told it a story about the sea.",
)
_SETTLE_DEADLINE_S: Final = 25.0


@dataclass(frozen=True)
class Hop:
    """One paid call on one hop: who paid whom, the price, the signed receipt's amount."""

    call: int
    payer: str
    payee: str
    price: int
    receipt: int
    channel: str
    what: str


@dataclass(frozen=True)
class Settlement:
    """One channel after settlement: the payer's receipts, the payee's ledger, the payer's
    spend log and what the payee claimed on chain, in base units."""

    payer: str
    payee: str
    channel: str
    receipted: int  # the payer's signed receipts
    ledger: int  # the payee's ledger's receipts
    spend: int  # the payer's spend log
    claimed: int  # the escrow's claimed total

    @property
    def holds(self) -> bool:
        """The money invariants: both sides hold the same receipts; claimed <= receipted;
        recorded spend >= claimed."""
        return self.receipted == self.ledger and self.claimed <= self.receipted \
            and self.spend >= self.claimed


@dataclass(frozen=True)
class TradeScene:
    hops: list[Hop]
    settlements: list[Settlement]
    summaries: list[str]


def trade_step(market: DemoMarket, console: Console) -> TradeScene:
    """The scene on the running ``market``; every process it starts is stopped after."""
    chain = market.chain
    rpc = chain.rpc_url
    root = market.work / "trade"
    root.mkdir(parents=True, exist_ok=True)
    names = {u: name for name, url in market.nodes.items()
             for u in (url, url.removesuffix("/v1"))}
    with ExitStack() as stack:
        wallet = keystore_for(chain, SELLER, root / "seller.json")
        key_file = root / "summarize.key"  # the tool's gateway key, written once minted
        port = free_port()
        seller_gateway = f"http://127.0.0.1:{port}/v1"
        with console.status("the seller agent starts a gateway of its own (its wallet, its "
                            "deposit) and sells its summarize tool (agoranet tools serve)"), \
                environment({"AGORANET_GATEWAY_REFRESH_S": GATEWAY_REFRESH_S,
                             "AGORANET_SUMMARIZE_GATEWAY": seller_gateway,
                             "AGORANET_SUMMARIZE_KEY_FILE": str(key_file)}), \
                ThreadPoolExecutor(2) as pool:  # both start at once: each takes seconds
            gateway_up = running_command([
                "gateway", "--registry-rpc-url", rpc, "--rpc-url", rpc, "--keystore",
                str(wallet), "--deposit", str(SELLER_DEPOSIT), "--budget", str(TOOL_KEY_BUDGET),
                "--spend-log", str(root / "gateway" / "spend.sqlite")], port=port,
                output=root / "seller-gateway.log")
            tools_up = running_command([
                "tools", "serve", "agoranet.tools.examples.summarize:from_env", "--rpc-url",
                rpc, "--keystore", str(wallet), "--ledger", str(root / "tools.ledger.sqlite"),
                "--settle-interval", "0.5", "--claim-max-age", "1"], output=root / "tools.log")
            tools = list(pool.map(stack.enter_context, (gateway_up, tools_up)))[1]
            tools = tools.removesuffix("/v1")
            wait_for_nodes(seller_gateway, 1)
            seller_owner = (root / "gateway" / "owner.key").read_text().strip()
            _write_secret(key_file, _mint(seller_gateway.removesuffix("/v1"), seller_owner,
                                          "summarize", TOOL_KEY_BUDGET))
            _register_tools(rpc, chain.private_keys[SELLER], tools)
        console.print(f"the seller agent ({chain.accounts[SELLER][:10]}…) sells "
                      f"[bold]summarize[/] at {tools}, paid to its wallet; the tool buys its "
                      "tokens through the seller's own gateway, with a key worth "
                      f"{format_amount(TOOL_KEY_BUDGET)} USDC")
        with console.status("the buyer's gateway finds the tool in the registry"):
            listed = _wait_listed(market.gateway, market.owner_key, "summarize")
        researcher = _mint(market.gateway, market.owner_key, "researcher", RESEARCHER_BUDGET)
        import anyio

        answers = anyio.run(_buy_over_mcp, market.gateway, researcher, TEXTS)
        most = (listed.get("price") or {}).get("max_amount")
        console.print("the buyer agent [bold]researcher[/] (a key of its own worth "
                      f"{format_amount(RESEARCHER_BUDGET)} USDC) finds [bold]tool__summarize"
                      "[/] on its gateway's MCP server, priced by its text"
                      + (f" (at most {format_amount(int(most))} USDC a call)" if most else "")
                      + ", and calls it with the mcp client")
        hops: list[Hop] = []
        summaries = []
        for number, (text, answer) in enumerate(zip(TEXTS, answers, strict=True), 1):
            result = answer["result"]
            summaries.append(str(result["summary"]))
            console.print(f"[bold cyan]researcher #{number}:[/] summarize {len(text)} "
                          f"characters  [dim]→ the tiny model's summary: "
                          f"{result['summary']!r}[/]")
            receipt = answer["receipt"]
            hops.append(Hop(number, "researcher", "summarize", int(answer["cost"]),
                            int(receipt["amount"]), str(receipt["channelId"]).lower(),
                            f"1 call, {len(text.encode())} B"))
            hops += _inference_hops(number, result["inference"], root / "gateway" /
                                    "spend.sqlite", names)
        _hops_table(hops, console)
        with console.status("the tool seller and the nodes claim their vouchers on chain"):
            settlements = _settle(market, hops, root)
        _settlement_table(settlements, console)
        earned = sum(h.receipt for h in hops if h.payee == "summarize")
        spent = sum(h.receipt for h in hops if h.payer == "summarize")
        console.print(f"the seller agent earned {format_amount(earned)} USDC for its tool and "
                      f"paid {format_amount(spent)} for the tokens it needed: it kept "
                      f"{format_amount(earned - spent)}; "
                      + _verdict(settlements) + "\n")
    return TradeScene(hops, settlements, summaries)


def _verdict(settlements: list[Settlement]) -> str:
    if not all(s.holds for s in settlements):
        return "[bold red]a channel's books disagree[/]"
    if any(s.claimed < s.receipted for s in settlements):
        return "the books agree, but not all of it was claimed on chain in time"
    return "every channel's receipts, ledger, spend log and claims agree"


def _mint(root: str, owner: str, name: str, budget: int) -> str:
    made = httpx.post(f"{root}/agoranet/keys", headers={"Authorization": f"Bearer {owner}"},
                      json={"name": name, "budget": budget}, timeout=30)
    if made.status_code != 201:
        raise GatewayCallError(f"the gateway did not mint '{name}': {made.text[:300]}",
                               status=made.status_code)
    return str(made.json()["key"])


def _write_secret(path: Path, secret: str) -> None:
    """``secret`` into ``path``, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret + "\n")


def _register_tools(rpc: str, private_key: str, root: str) -> None:
    from eth_account import Account

    from agoranet.registry.onchain import offer_hash, registry_at
    from agoranet.registry.tool_offer import ToolOffer, registry_url

    offer = ToolOffer.model_validate_json(
        httpx.get(f"{root}/.well-known/agoranet", timeout=10).content)
    registry_at(rpc).register(Account.from_key(private_key), registry_url(root),
                              offer_hash(offer))


def _wait_listed(gateway: str, owner: str, tool: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        reply = httpx.get(f"{gateway}/agoranet/tools", timeout=10,
                          headers={"Authorization": f"Bearer {owner}"})
        if reply.status_code == 200:
            for entry in reply.json()["data"]:
                if entry["name"] == tool:
                    return dict(entry)
        if time.monotonic() > deadline:
            raise GatewayCallError(f"the gateway never listed the tool {tool}: "
                                   f"{reply.text[:300]}", status=reply.status_code)
        time.sleep(0.3)


async def _buy_over_mcp(gateway: str, key: str, texts: tuple[str, ...]
                        ) -> list[dict[str, Any]]:
    """The buyer agent: the official MCP client on the gateway's /mcp, as ``key``."""
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import TextContent

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"},
                              timeout=httpx2.Timeout(120.0))
    answers = []
    async with http, streamable_http_client(f"{gateway}/mcp", http_client=http) as (
            read, write), ClientSession(read, write) as session:
        await session.initialize()
        listed = {t.name for t in (await session.list_tools()).tools}
        if "tool__summarize" not in listed:
            raise GatewayCallError(f"the gateway's MCP server lists no tool__summarize: "
                                   f"{sorted(listed)}", status=200)
        for text in texts:
            result = await session.call_tool("tool__summarize", {"text": text})
            if result.is_error or result.structured_content is None:
                said = " ".join(c.text for c in result.content if isinstance(c, TextContent))
                raise GatewayCallError(f"the buyer's gateway did not sell the call: {said}",
                                       status=200)
            answers.append(result.structured_content)
    return answers


def _inference_hops(number: int, inference: dict[str, Any], spend_log: Path,
                    names: dict[str, str]) -> list[Hop]:
    """The seller's gateway's rows (one per node paid) for the tool's inference."""
    from agoranet.gateway.spendlog import SpendLog

    log = SpendLog(spend_log)
    try:
        rows = log.rows(str(inference["request_id"]))
    finally:
        log.close()
    hops = []
    for row in rows:
        if row.receipt is None:
            continue
        receipt = json.loads(row.receipt)
        hops.append(Hop(number, "summarize", names.get(row.node, row.node), row.amount,
                        int(receipt["amount"]), str(receipt["channelId"]).lower(),
                        f"{row.prompt_tokens}+{row.completion_tokens} tokens"))
    return hops


def _ledger_total(ledger: Path, channel: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT COALESCE(SUM(amount), 0) FROM receipts WHERE channel_id = ?",
                         (channel,)).fetchone()
    return int(row[0])


def _spend_total(spend_log: Path, channel: str) -> int:
    from agoranet.gateway.spendlog import SpendLog

    log = SpendLog(spend_log)
    try:
        return sum(r.amount for r in log.rows()
                   if r.receipt and json.loads(r.receipt)["channelId"].lower() == channel)
    finally:
        log.close()


def _claimed(market: DemoMarket, channel: str) -> int:
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.payments.channels import escrow_contract

    escrow = escrow_contract(market.chain.web3(), resolve_addresses(market.chain.chain_id))
    return int(escrow.functions.channels(bytes.fromhex(channel[2:])).call()[1])


def _channels(hops: list[Hop]) -> Iterator[tuple[str, str, str, int]]:
    seen: dict[str, tuple[str, str, int]] = {}
    for hop in hops:
        payer, payee, total = seen.get(hop.channel, (hop.payer, hop.payee, 0))
        seen[hop.channel] = (payer, payee, total + hop.receipt)
    for channel, (payer, payee, total) in seen.items():
        yield channel, payer, payee, total


def _settle(market: DemoMarket, hops: list[Hop], root: Path) -> list[Settlement]:
    """Each channel once its payee has claimed what it was receipted (bounded wait)."""
    ledgers = {"summarize": root / "tools.ledger.sqlite", **market.ledgers}
    spend_logs = {"researcher": market.spend_log, "summarize": root / "gateway" / "spend.sqlite"}
    deadline = time.monotonic() + _SETTLE_DEADLINE_S
    settled = []
    for channel, payer, payee, receipted in _channels(hops):
        while (claimed := _claimed(market, channel)) < receipted and \
                time.monotonic() < deadline:
            time.sleep(0.3)
        settled.append(Settlement(payer, payee, channel, receipted,
                                  _ledger_total(ledgers[payee], channel),
                                  _spend_total(spend_logs[payer], channel), claimed))
    return settled


def _hops_table(hops: list[Hop], console: Console) -> None:
    table = Table(title="each hop of each call: its price and signed receipt (USDC)")
    for column in ("call", "hop: payer → payee", "for", "price", "receipt"):
        table.add_column(column, justify="right" if column in ("call", "price", "receipt")
                         else "left")
    for hop in hops:
        table.add_row(str(hop.call), f"{hop.payer} → {hop.payee}", hop.what,
                      format_amount(hop.price), format_amount(hop.receipt))
    console.print(table)


def _settlement_table(settlements: list[Settlement], console: Console) -> None:
    table = Table(title="settlement per channel: the payer's receipts and spend log, the "
                        "payee's ledger, what it claimed on chain (USDC)")
    for column in ("channel: payer → payee", "receipts", "ledger", "spend log", "claimed"):
        table.add_column(column, justify="right" if column != "channel: payer → payee"
                         else "left")
    for s in settlements:
        table.add_row(f"{s.payer} → {s.payee}", format_amount(s.receipted),
                      format_amount(s.ledger), format_amount(s.spend),
                      format_amount(s.claimed))
    console.print(table)
