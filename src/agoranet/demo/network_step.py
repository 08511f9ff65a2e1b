"""Demo step: a dev chain, four paid nodes in the registry, a paying gateway, failover, audits.

The cheapest node ("shady") serves int4-rounded weights under the honest hash:
the gateway audits the nodes that serve it and drops shady once caught. The
next cheapest ("budget") cuts every second answer part-way, so mid-answer
failover shows. The tables say which node served each request and what it
cost, what the audits found, and the nodes' on-chain balances show what they
settled from the gateway's vouchers.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agoranet.node.launcher import running_command, running_node
from agoranet.payments.amounts import format_amount

__all__ = ["GATEWAY_REFRESH_S", "NODES", "DemoMarket", "DemoNetwork", "WithGateway",
           "audit_table", "ban_text", "dashboard_lines", "environment", "keystore_for",
           "network_step", "wait_for_nodes"]

PASSWORD = "agoranet-demo"  # dev-chain keys only
QUESTIONS = ["Tell me a short story.", "What did Maya do yesterday?", "Tell me about the beach.",
             "What should I cook for dinner?", "Tell me a story about Omar."]


@dataclass(frozen=True)
class DemoNode:
    name: str
    account: int  # index of the dev chain's account that runs it
    price_in: int
    price_out: int
    # options of the test-only node (python -m agoranet.testing node): cheats, chaos
    chaos: tuple[str, ...] = field(default=())


# Prices per million tokens in base units of a 6-decimal stablecoin: 2_000_000 is 2 USDC.
NODES = (
    DemoNode("shady", 7, 1_000_000, 3_000_000, ("--cheat", "int4")),  # rounded weights
    DemoNode("budget", 3, 2_000_000, 6_000_000,
             ("--chaos-fail-after", "12", "--chaos-fail-every", "2")),
    DemoNode("steady", 4, 4_000_000, 12_000_000),
    DemoNode("premium", 5, 10_000_000, 30_000_000),
)
BUYER = 6
# How often the demo's gateways re-read the registry (nodes and tool servers), in seconds:
# a tool server registered mid-demo is found within this.
GATEWAY_REFRESH_S = "2"


@dataclass
class Served:
    question: str
    nodes: list[str]
    ttft_ms: float
    tokens: int
    amount: int
    failovers: int


def keystore_for(chain: object, index: int, path: Path) -> Path:
    """A keystore (the demo's password) for the dev chain's account ``index``."""
    from agoranet.payments.wallet import create_keystore

    key = chain.private_keys[index]  # type: ignore[attr-defined]
    create_keystore(path, os.environ["AGORANET_WALLET_PASSWORD"],
                    private_key=bytes.fromhex(key.removeprefix("0x")), scrypt_n=2**12)
    return path


def _register(rpc_url: str, private_key: str, url: str) -> None:
    from eth_account import Account

    from agoranet.registry.offer import Offer
    from agoranet.registry.onchain import offer_hash, registry_at

    offer = Offer.model_validate_json(
        httpx.get(url.removesuffix("/v1") + "/.well-known/agoranet", timeout=10).content)
    registry_at(rpc_url).register(Account.from_key(private_key), url, offer_hash(offer))


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in the environment (for the processes started meanwhile), then as before."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def wait_for_nodes(gateway: str, count: int) -> None:
    """Until the gateway at ``gateway`` (its /v1 URL) has ``count`` nodes with models."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=5).json()
        if sum(1 for r in rows["nodes"] if r["models"]) >= count:
            return
        time.sleep(0.3)
    raise TimeoutError("the gateway did not discover the nodes")


def _ask(client: object, question: str, console: Console) -> Served:
    console.print(f"[bold cyan]user:[/] {question}")
    console.print("[bold green]network:[/] ", end="")
    started = time.perf_counter()
    first = 0.0
    summary: dict[str, object] = {}
    tokens = 0
    stream = client.chat.completions.create(  # type: ignore[attr-defined]
        model="tiny", messages=[{"role": "user", "content": question}], max_tokens=60,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"agoranet": {"prefer": "cheapest"}})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            console.print(chunk.choices[0].delta.content, end="", highlight=False)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
            summary = (chunk.model_extra or {}).get("agoranet") or summary
    console.print("\n")
    return Served(question, [str(n) for n in summary.get("nodes", [])],  # type: ignore[attr-defined]
                  (first - started) * 1000, tokens, int(summary.get("amount", 0)),  # type: ignore[call-overload]
                  int(summary.get("failovers", 0)))  # type: ignore[call-overload]


# What to do with the running gateway before it stops: its /v1 URL, the owner's key, the
# key store.
WithGateway = Callable[[str, str, Path], object]


@dataclass(frozen=True)
class DemoMarket:
    """The running market as a later step trades on it: the dev chain, the buyer's gateway
    (its root URL, owner key and spend log), each node's /v1 URL and ledger, a work folder."""

    chain: Any  # agoranet.chain.devchain.DevChain
    gateway: str
    owner_key: str
    spend_log: Path
    nodes: dict[str, str]
    ledgers: dict[str, Path]
    work: Path


@dataclass(frozen=True)
class DemoNetwork:
    """The running network as its dashboards see it: the gateway's root URL and owner key,
    each node's root URL and operator secret (dev-chain demo only: never print real ones)."""

    gateway: str
    owner_key: str
    nodes: dict[str, str]
    operator_secrets: dict[str, str]


def dashboard_lines(network: DemoNetwork) -> list[str]:
    """Where to look, and the secrets to log in with."""
    lines = [f"gateway dashboard  {network.gateway}/  (owner key: {network.owner_key})"]
    lines += [f"node '{name}' dashboard  {url}/  (operator secret: "
              f"{network.operator_secrets[name]})" for name, url in network.nodes.items()]
    return lines


def network_step(model_dir: Path, work: Path, console: Console,
                 with_gateway: WithGateway | None = None,
                 at_end: Callable[[DemoNetwork], object] | None = None,
                 with_market: Callable[[DemoMarket], object] | None = None) -> None:
    from openai import OpenAI

    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.devchain import start_devchain
    from agoranet.payments.wallet import balances

    shutil.rmtree(work / "network", ignore_errors=True)
    root = work / "network"
    root.mkdir(parents=True)
    os.environ.setdefault("AGORANET_WALLET_PASSWORD", PASSWORD)
    with ExitStack() as stack:
        with console.status("starting the dev chain (anvil) with the x402 contracts"):
            chain = start_devchain()
            stack.callback(chain.stop)
        rpc = chain.rpc_url
        coin = resolve_addresses(chain.chain_id)
        urls: dict[str, str] = {}
        for spec in NODES:
            with console.status(f"starting node '{spec.name}' and registering it on chain"):
                keystore = keystore_for(chain, spec.account, root / f"{spec.name}.json")
                urls[spec.name] = stack.enter_context(running_node([
                    "--model", str(model_dir), "--served-model-name", "tiny",
                    "--price-in", str(spec.price_in), "--price-out", str(spec.price_out),
                    "--rpc-url", rpc, "--keystore", str(keystore),
                    "--ledger", str(root / f"{spec.name}.ledger.sqlite"),
                    "--settle-interval", "0.5", "--claim-max-age", "1",
                    "--operator-secret-file", str(root / f"{spec.name}.operator.secret"),
                    "--no-fine-tuning", "--no-adapters", *spec.chaos],
                    module="agoranet.testing" if spec.chaos else "agoranet"))
                _register(rpc, chain.private_keys[spec.account], urls[spec.name])
        names = {url: name for name, url in urls.items()}
        parties = {**{s.name: chain.accounts[s.account] for s in NODES},
                   "buyer (gateway)": chain.accounts[BUYER]}
        before = {p: balances(chain.web3(), coin, a).stablecoin or 0 for p, a in parties.items()}
        with console.status("starting the gateway (discovers nodes from the registry)"):
            buyer = keystore_for(chain, BUYER, root / "buyer.json")
            with environment({"AGORANET_GATEWAY_REFRESH_S": GATEWAY_REFRESH_S}):
                gateway = stack.enter_context(running_command([
                    "gateway", "--registry-rpc-url", rpc, "--rpc-url", rpc, "--keystore",
                    str(buyer), "--deposit", "200000", "--budget", "100000",
                    "--audit-reference", str(model_dir), "--audit-share", "1",
                    # A new gateway has spent too little for 2% of it to pay one audit: let
                    # audits spend up to 0.05 USDC up front, so the first nodes get checked.
                    "--audit-budget-floor", "50000",
                    "--spend-log", str(root / "gateway" / "spend.sqlite")]))
            wait_for_nodes(gateway, len(NODES))
        owner_key = root / "gateway" / "owner.key"  # written 0600 by the gateway's first start
        console.print(f"gateway at {gateway}: any OpenAI client works against it, with the "
                      f"owner's key (OPENAI_API_KEY=$(cat {owner_key}))\n")
        client = OpenAI(base_url=gateway, api_key=owner_key.read_text().strip(), max_retries=0)
        served = []
        for question in QUESTIONS:
            served.append(_ask(client, question, console))
            time.sleep(2.0)  # let the background audit of the node that served finish
        _served_table(served, names, console)
        audit_table(gateway, names, console)
        with console.status("nodes claim and settle their vouchers on chain"):
            paid = sum(s.amount for s in served)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                after = {p: balances(chain.web3(), coin, a).stablecoin or 0
                         for p, a in parties.items()}
                if sum(after[s.name] - before[s.name] for s in NODES) >= paid:
                    break
                time.sleep(0.5)
        _balances_table(before, after, paid, console)
        if with_gateway is not None:
            with_gateway(gateway, owner_key.read_text().strip(), root / "gateway" / "keys.sqlite")
        if with_market is not None:
            with_market(DemoMarket(
                chain, gateway.removesuffix("/v1"), owner_key.read_text().strip(),
                root / "gateway" / "spend.sqlite", urls,
                {s.name: root / f"{s.name}.ledger.sqlite" for s in NODES}, root))
        if at_end is not None:
            at_end(DemoNetwork(
                gateway.removesuffix("/v1"), owner_key.read_text().strip(),
                {name: url.removesuffix("/v1") for name, url in urls.items()},
                {s.name: (root / f"{s.name}.operator.secret").read_text().strip()
                 for s in NODES}))


def _served_table(served: list[Served], names: dict[str, str], console: Console) -> None:
    table = Table(title="who served what (cheapest first; 'shady' cheats, 'budget' cuts answers)")
    for column in ("#", "question", "served by", "first token ms", "tokens", "paid (USDC)",
                   "failovers"):
        table.add_column(column, justify="left" if column in ("question", "served by") else "right")
    for i, s in enumerate(served, 1):
        table.add_row(str(i), s.question, " → ".join(names.get(n, n) for n in s.nodes),
                      f"{s.ttft_ms:.0f}", str(s.tokens), format_amount(s.amount), str(s.failovers))
    console.print(table)


def audit_table(gateway: str, names: dict[str, str], console: Console) -> None:
    rows = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=10).json()["nodes"]
    table = Table(title="background audits against the reference weights")
    for column in ("node", "audits", "last verdict", "banned (why)"):
        table.add_column(column)
    for row in rows:
        audits = row.get("audits") or []
        table.add_row(names.get(row["url"], row["url"]), str(len(audits)),
                      Text(audits[-1] if audits else "-"), Text(ban_text(row)))
    console.print(table)


def ban_text(row: dict[str, Any]) -> str:
    """``no``, or ``yes:`` and why, from a row of the gateway's ``/agoranet/nodes``: a node
    banned for cutting answers may well have passed its audit."""
    if not row["banned"]:
        return "no"
    reason = str(row.get("ban_reason") or "no reason given")
    stamp, _, rest = reason.partition(" ")  # the gateway's events start "HH:MM:SS "
    if rest and len(stamp) == 8 and stamp.replace(":", "").isdigit():
        reason = rest
    return f"yes: {reason}"


def _balances_table(before: dict[str, int], after: dict[str, int], paid: int,
                    console: Console) -> None:
    table = Table(title="stablecoin balances on chain, before and after settlement")
    for column in ("party", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "party" else "right")
    for party in before:
        change = after[party] - before[party]
        table.add_row(party, format_amount(before[party]), format_amount(after[party]),
                      ("+" if change > 0 else "") + format_amount(change))
    console.print(table)
    nodes_gained = sum(after[p] - before[p] for p in before if p != "buyer (gateway)")
    console.print(f"the chats cost {format_amount(paid)} USDC; the audits' challenges, paid like "
                  f"any request, {format_amount(nodes_gained - paid)}; the buyer's deposits stay "
                  "in its channels, refundable with a timed withdrawal")
