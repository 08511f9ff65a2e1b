"""The gateway buys paid tools, with real processes on the dev chain.

Two tool servers (``agoranet tools serve agoranet.testing.tool_kit:tools``, paid to dev
accounts 3 and 4) sell the same tools; a keyed gateway with a wallet (account 5) finds
them with ``--tools URL`` and the official ``mcp`` client drives its ``/mcp`` with an
agent's key:

- the market's tools are listed as MCP tools with their prices; ``tool__echo`` (1,000
  base units a call) and ``tool__count`` (7 per character, quoted by the seller) are
  bought, and the buyer's spend log (per key and per seller), the seller's receipts and
  what the seller claimed on chain agree to the base unit, with the money invariants
  (claimed <= receipted, recorded spend >= claimed);
- a key whose budget is below the price is refused, and nothing is charged anywhere;
- a tool that fails on every seller (``boom``) costs nothing and lowers both sellers'
  reputation; with the first seller stopped, the call is served by the second (failover
  to the same name and schema hash).

A third server registered on chain is listed by a gateway that reads the registry; once
its entry no longer matches its offer (re-registered with another hash: a tampered
offer), the gateway refuses it, says so in its log and stops listing its tools.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from eth_account import Account
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import DevChain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.gateway.spendlog import SpendLog
from agoranet.node.launcher import running_command
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore
from agoranet.registry.onchain import registry_at
from agoranet.testing.tool_cheats import CHEAP_ECHO_PRICE
from agoranet.testing.tool_kit import ECHO_PRICE, PER_CHAR
from helpers import logged
from tools.support import (
    PASSWORD,
    Chain,
    claimed_on_chain,
    ledger_receipts,
    serve_tools,
    wait_claimed,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def dev(chain: DevChain) -> Chain:
    return Chain(chain, connect(chain.rpc_url),
                 resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url)))


@pytest.fixture
def gateway_args(dev: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A keyed gateway paying from dev account 5."""
    monkeypatch.setenv(PASSWORD_ENV_VAR, PASSWORD)
    monkeypatch.setenv("AGORANET_GATEWAY_REFRESH_S", "1")
    wallet = tmp_path / "gateway.json"
    create_keystore(wallet, PASSWORD, private_key=bytes.fromhex(
        dev.dev.private_keys[5].removeprefix("0x")), scrypt_n=2**10)
    return ["-v", "gateway", "--rpc-url", dev.dev.rpc_url, "--keystore", str(wallet),
            "--deposit", "100000", "--budget", "1000000",
            "--spend-log", str(tmp_path / "gw" / "spend.sqlite")]


def _owner(tmp_path: Path) -> dict[str, str]:
    return {"Authorization": "Bearer " + (tmp_path / "gw" / "owner.key").read_text().strip()}


def _key(root: str, owner: dict[str, str], name: str, budget: int) -> str:
    made = httpx.post(f"{root}/agoranet/keys", headers=owner, timeout=30,
                      json={"name": name, "budget": budget})
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def _listed(root: str, owner: dict[str, str]) -> list[dict[str, Any]]:
    reply = httpx.get(f"{root}/agoranet/tools", headers=owner, timeout=30)
    assert reply.status_code == 200, reply.text
    return list(reply.json()["data"])


def _wait_listed(root: str, owner: dict[str, str], check: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not check(_listed(root, owner)):
        assert time.monotonic() < deadline, f"the gateway never {what}: {_listed(root, owner)}"
        time.sleep(0.2)


@asynccontextmanager
async def _mcp(root: str, key: str) -> AsyncIterator[ClientSession]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"},
                              timeout=httpx2.Timeout(120.0))
    async with http, streamable_http_client(f"{root}/mcp", http_client=http) as (
            read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def _text(result: CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent)
    return result.content[0].text


def _rows(spend_log: Path) -> list[Any]:
    log = SpendLog(spend_log)
    try:
        return [r for r in log.rows() if r.model.startswith("tool:")]
    finally:
        log.close()


def test_a_key_buys_tools_over_mcp_and_the_chain_agrees(
        dev: Chain, tmp_path: Path, gateway_args: list[str]) -> None:
    with ExitStack() as stack:
        sellers = {}
        for name, index in (("a", 3), ("b", 4)):
            own = stack.enter_context(ExitStack())  # each closable on its own
            process = own.enter_context(serve_tools(
                dev, _folder(tmp_path, name), ["agoranet.testing.tool_kit:tools"],
                key_index=index))
            sellers[process.root] = (process, own)
        (a, _), (b, _) = sellers.values()
        url = stack.enter_context(running_command(
            [*gateway_args, "--tools", a.root, "--tools", b.root],
            output=tmp_path / "gateway.log"))
        root = url.removesuffix("/v1")
        owner = _owner(tmp_path)
        _wait_listed(root, owner, lambda data: any(
            t["name"] == "echo" and len(t["sellers"]) == 2 for t in data), "listed both sellers")
        agent = _key(root, owner, "agent", 5_000)
        poor = _key(root, owner, "poor", ECHO_PRICE - 1)
        spend_log = tmp_path / "gw" / "spend.sqlite"

        async def scenario() -> dict[str, Any]:
            out: dict[str, Any] = {}
            async with _mcp(root, agent) as session:
                tools = {t.name: t for t in (await session.list_tools()).tools}
                assert {"ask", "budget", "tool__echo", "tool__count", "tool__boom"} <= set(tools)
                assert f"{ECHO_PRICE} base units" in (tools["tool__echo"].description or "")
                assert "set by the arguments" in (tools["tool__count"].description or "")
                echo = await session.call_tool("tool__echo", {"text": "hi", "times": 2})
                assert not echo.is_error, _text(echo)
                out["echo"] = echo.structured_content
                count = await session.call_tool("tool__count", {"text": "hello world"})
                assert not count.is_error, _text(count)
                out["count"] = count.structured_content
                before = len(_rows(spend_log))
                out["scores"] = _scores(root, owner)
                boom = await session.call_tool("tool__boom", {"reason": "test"})
                assert boom.is_error and "every seller" in _text(boom), _text(boom)
                assert len(_rows(spend_log)) == before + 2  # one failed row per seller, 0 each
                out["scores_after_boom"] = _scores(root, owner)
                out["budget"] = json.loads(_text(await session.call_tool("budget", {})))
            async with _mcp(root, poor) as session:
                refused = await session.call_tool("tool__echo", {"text": "x"})
                assert refused.is_error and "insufficient_quota" in _text(refused), _text(refused)
                assert "999 base units left" in _text(refused)
            return out

        out = anyio.run(scenario)
        echo, count = out["echo"], out["count"]
        assert echo["result"] == {"result": "hihi"} and echo["cost"] == ECHO_PRICE
        assert count["result"] == {"words": 2, "characters": 11}
        assert count["cost"] == PER_CHAR * len("hello world")
        assert out["budget"]["spent"] == ECHO_PRICE + count["cost"]
        rows = _rows(spend_log)
        assert not [r for r in rows if r.key == "poor"], rows  # refused before any payment
        paid = [r for r in rows if r.outcome == "ok"]
        assert {r.key for r in paid} == {"agent"} and len(paid) == 2
        assert all(r.amount == 0 for r in rows if r.outcome == "failed")
        assert sum(r.amount for r in rows) == ECHO_PRICE + count["cost"]
        # per seller: spend log == seller's receipts == claimed on chain, to the base unit
        ledgers = {a.root: a.ledger, b.root: b.ledger}
        by_seller: dict[str, int] = {}
        channels: dict[str, str] = {}
        for r in paid:
            by_seller[r.node] = by_seller.get(r.node, 0) + r.amount
            channels[r.node] = json.loads(r.receipt)["channelId"]
        for seller, amount in by_seller.items():
            assert sum(ledger_receipts(ledgers[seller], channels[seller])) == amount
            wait_claimed(dev, channels[seller], amount)
            assert claimed_on_chain(dev, channels[seller])[1] == amount
        # failover: the seller that answered first is stopped; the other one answers
        first = echo["seller"]
        other = b.root if first == a.root else a.root
        scores = out["scores_after_boom"]
        assert all(scores[u] < out["scores"][u] for u in (a.root, b.root))  # boom failed on both
        sellers[first][1].close()
        reply = httpx.post(f"{root}/agoranet/tools/call",
                           headers={"Authorization": f"Bearer {agent}"}, timeout=60,
                           json={"name": "echo", "arguments": {"text": "again"}})
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["result"] == {"result": "again"} and answer["seller"] == other
        assert [t["seller"] for t in answer["tried"]] == [first]
        assert answer["tried"][0]["charged"] == 0
        assert _scores(root, owner)[first] < scores[first]  # its failure lowered its score


def _scores(root: str, owner: dict[str, str]) -> dict[str, float]:
    return {s["url"]: s["score"] for t in _listed(root, owner) if t["name"] == "echo"
            for s in t["sellers"]}


def _folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


def test_a_tampered_registry_entry_is_refused(dev: Chain, tmp_path: Path,
                                              gateway_args: list[str]) -> None:
    seller = Account.from_key(dev.dev.private_keys[6])
    with ExitStack() as stack:
        c = stack.enter_context(serve_tools(dev, _folder(tmp_path, "c"),
                                            ["agoranet.testing.tool_kit:tools"], key_index=6))
        _agoranet("registry", "register", "--url", c.root, "--keystore",
                  str(tmp_path / "c" / "keystore.json"), "--rpc-url", dev.dev.rpc_url)
        listed = _agoranet("registry", "list", "--offers", "--rpc-url", dev.dev.rpc_url)
        assert all(len(line) <= 80 for line in listed.splitlines()), listed
        assert f"{c.root}/tools" in listed.splitlines() and "tools: echo, count, boom" in listed
        entry = _entry(dev, c.root)
        assert entry["kind"] == "tools" and entry["provider"] == seller.address
        assert entry["offer"]["status"] == "ok"
        assert [t["name"] for t in entry["offer"]["tools"]] == ["echo", "count", "boom"]
        registry = registry_at(dev.dev.rpc_url)
        url = stack.enter_context(running_command(
            [*gateway_args, "--registry-rpc-url", dev.dev.rpc_url],
            output=tmp_path / "gateway.log"))
        root = url.removesuffix("/v1")
        owner = _owner(tmp_path)
        _wait_listed(root, owner, lambda data: any(
            s["url"] == c.root for t in data for s in t["sellers"]), "listed the registered seller")
        registry.register(seller, f"{c.root}/tools", "0x" + "ab" * 32)  # tampered
        assert _entry(dev, c.root)["offer"]["status"] == "refused"
        _wait_listed(root, owner, lambda data: not any(
            s["url"] == c.root for t in data for s in t["sellers"]), "refused the seller")
        logged(tmp_path / "gateway.log", lambda log: "tool offer refused" in log
               and "hash is not the registered one" in log, "the tampered offer refused")
        reply = httpx.post(f"{root}/agoranet/tools/call", headers=owner, timeout=30,
                           json={"name": "echo", "arguments": {"text": "x"}})
        assert reply.status_code == 404, reply.text


def test_a_seller_that_takes_payment_and_fails_loses_reputation_and_the_next_answers(
        dev: Chain, tmp_path: Path, gateway_args: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cheaper seller of ``echo`` charges and answers 500: the gateway keeps its receipt
    (what it can claim is counted as spent, on the key too), records a receipt
    disagreement against it, and buys the call from the honest seller."""
    cheat_folder, honest_folder = _folder(tmp_path, "cheat"), _folder(tmp_path, "honest")
    cheat_key = dev.dev.private_keys[7]
    keystore = cheat_folder / "keystore.json"
    create_keystore(keystore, PASSWORD, private_key=bytes.fromhex(cheat_key.removeprefix("0x")),
                    scrypt_n=2**10)
    monkeypatch.setenv(PASSWORD_ENV_VAR, PASSWORD)
    with ExitStack() as stack:
        cheat = stack.enter_context(running_command(
            ["-v", "tools", "serve", "agoranet.testing.tool_cheats:cheap", "--rpc-url",
             dev.dev.rpc_url, "--keystore", str(keystore), "--ledger",
             str(cheat_folder / "ledger.sqlite"), "--claim-min-amount", "1",
             "--settle-interval", "0.3"], module="agoranet.testing.tool_cheats",
            output=cheat_folder / "tools.log")).removesuffix("/v1")
        honest = stack.enter_context(serve_tools(dev, honest_folder,
                                                 ["agoranet.testing.tool_kit:tools"],
                                                 key_index=8))
        url = stack.enter_context(running_command(
            [*gateway_args, "--tools", cheat, "--tools", honest.root],
            output=tmp_path / "gateway.log"))
        root = url.removesuffix("/v1")
        owner = _owner(tmp_path)
        _wait_listed(root, owner, lambda data: any(
            t["name"] == "echo" and len(t["sellers"]) == 2 for t in data), "listed both sellers")
        agent = _key(root, owner, "agent", 5_000)
        reply = httpx.post(f"{root}/agoranet/tools/call",
                           headers={"Authorization": f"Bearer {agent}"}, timeout=60,
                           json={"name": "echo", "arguments": {"text": "hi"}})
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer["seller"] == honest.root and answer["result"] == {"result": "hi"}
        assert answer["tried"] == [{"seller": cheat, "charged": CHEAP_ECHO_PRICE,
                                    "error": answer["tried"][0]["error"]}]
        assert "charged" in answer["tried"][0]["error"]
        rows = _rows(tmp_path / "gw" / "spend.sqlite")
        assert sorted((r.node, r.outcome, r.amount, r.key) for r in rows) == sorted([
            (cheat, "failed", CHEAP_ECHO_PRICE, "agent"), (honest.root, "ok", ECHO_PRICE,
                                                            "agent")])
        keys = httpx.get(f"{root}/agoranet/keys", headers=owner, timeout=30).json()["data"]
        assert next(k for k in keys if k["name"] == "agent")["spent"] == \
            CHEAP_ECHO_PRICE + ECHO_PRICE
        scores = {s["url"]: s["score"] for t in _listed(root, owner) if t["name"] == "echo"
                  for s in t["sellers"]}
        assert scores[cheat] < 0.1 < 0.5 < scores[honest.root]  # a receipt disagreement
        # what each seller claims on chain is what the buyer's log says it was paid
        for r in rows:
            channel = json.loads(r.receipt)["channelId"]
            wait_claimed(dev, channel, r.amount)
        assert sum(ledger_receipts(honest.ledger, json.loads(next(
            r for r in rows if r.node == honest.root).receipt)["channelId"])) == ECHO_PRICE


def _agoranet(*args: str) -> str:
    """``agoranet ARGS`` as a user runs it (80 columns); its output."""
    done = subprocess.run([sys.executable, "-m", "agoranet", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def _entry(dev: Chain, root: str) -> dict[str, Any]:
    data = json.loads(_agoranet("registry", "list", "--offers", "--json", "--rpc-url",
                                dev.dev.rpc_url))
    return next(e for e in data if e["url"] == f"{root}/tools")
