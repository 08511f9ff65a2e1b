"""Gateway keys with real processes: a tiny-model node, keyed gateways, the CLI beside them.

The node charges only output (price_in 0, 250_000 per million tokens) and every request
asks for at most 4 tokens: its worst case and its actual cost are both exactly 1 base
unit, so a key with ``k`` base units left affords exactly ``k`` requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.chain.devchain import DevChain
from agoranet.gateway.spendlog import SpendLog
from agoranet.node.launcher import free_port, wait_healthy
from helpers import node_process, rigged_node_process

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Tell me about the library."}]


@pytest.fixture(scope="module")
def node(tiny_model: Path) -> Iterator[str]:
    # Each SSE frame is held 60 ms: a request stays in flight long enough to be cut.
    with rigged_node_process(["--model", str(tiny_model), "--price-in", "0", "--price-out",
                               "250000", "--free", "--no-fine-tuning", "--no-adapters",
                               "--max-active", "16", "--chaos-delay-ms", "60"]) as url:
        yield url


@dataclass
class Gateway:
    url: str
    root: str
    process: subprocess.Popen[bytes]
    home: Path

    @property
    def owner(self) -> str:
        return (self.home / "owner.key").read_text().strip()

    def call(self, method: str, path: str, key: str | None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.request(method, self.root + path, headers=headers, timeout=30, **kw)

    def mint(self, key: str, name: str, budget: int, **fields: Any) -> str:
        made = self.call("POST", "/agoranet/keys", key,
                         json={"name": name, "budget": budget, **fields})
        assert made.status_code == 201, made.text
        return str(made.json()["key"])

    def keys(self) -> dict[str, dict[str, Any]]:
        listed = self.call("GET", "/agoranet/keys", self.owner).json()["data"]
        return {k["name"]: k for k in listed}


@contextmanager
def gateway(node: str, home: Path, *extra: str) -> Iterator[Gateway]:
    """``agoranet -vv gateway`` (debug logs, all kept in ``home/gateway.log``)."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    with (home / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "agoranet", "-vv", "gateway", "--node", node,
             "--spend-log", str(home / "spend.sqlite"), "--port", str(port), *extra],
            stdout=log, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, f"{root}/health", 60)
        deadline = time.monotonic() + 30
        while not httpx.get(f"{root}/agoranet/nodes").json()["nodes"][0]["models"]:
            assert time.monotonic() < deadline, "the gateway never read the node's offer"
            time.sleep(0.1)
        yield Gateway(f"{root}/v1", root, process, home)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _ask(client: httpx.AsyncClient, url: str, key: str) -> tuple[int, dict[str, Any]]:
    try:
        reply = await client.post(f"{url}/chat/completions", headers={
            "Authorization": f"Bearer {key}"}, json={"model": "tiny", "messages": QUESTION,
                                                      "max_tokens": 4, "temperature": 0})
    except httpx.HTTPError:
        return 0, {}  # cut: the gateway died under it
    return reply.status_code, reply.json()


def burst(url: str, key: str, count: int) -> list[tuple[int, dict[str, Any]]]:
    async def run() -> list[tuple[int, dict[str, Any]]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as c:
            return await asyncio.gather(*(_ask(c, url, key) for _ in range(count)))
    return asyncio.run(run())


def served(replies: list[tuple[int, dict[str, Any]]]) -> int:
    assert all(r["agoranet"]["amount"] == 1 for s, r in replies if s == 200)  # worst == actual
    return sum(1 for status, _ in replies if status == 200)


def refused(replies: list[tuple[int, dict[str, Any]]], name: str) -> int:
    quota = [r for s, r in replies if s == 429]
    for body in quota:
        assert body["error"]["code"] == body["error"]["type"] == "insufficient_quota"
        assert f"key '{name}'" in body["error"]["message"]
    return len(quota)


def spend_by_key(home: Path) -> dict[str, int]:
    log = SpendLog(home / "spend.sqlite")
    try:
        return {key: amount for key, _, _, amount, _ in log.totals("key")}
    finally:
        log.close()


def test_concurrent_requests_on_a_key_get_exactly_what_it_affords(
        node: str, tmp_path: Path) -> None:
    with gateway(node, tmp_path, "--budget", "14") as gw:
        team = gw.mint(gw.owner, "team", 10)
        agent = gw.mint(team, "agent", 7)
        other = gw.mint(team, "other", 7)  # each within what 'team' has left: 10
        first = burst(gw.url, agent, 50)
        assert served(first) == 7 and refused(first, "agent") == 43
        second = burst(gw.url, other, 50)  # 'team' has 3 left: it is what runs out
        assert served(second) == 3 and refused(second, "team") == 47
        solo = gw.mint(gw.owner, "solo", 10)  # the global budget (14) has 4 left
        third = burst(gw.url, solo, 20)
        assert served(third) == 4
        assert all(s == 402 and r["error"]["code"] == "budget_exceeded"
                   for s, r in third if s != 200)
        keys = gw.keys()
        budget = httpx.get(f"{gw.root}/agoranet/nodes").json()["budget"]
    assert {n: (k["spent"], k["reserved"]) for n, k in keys.items()} == {
        "owner": (14, 0), "team": (10, 0), "agent": (7, 0), "other": (3, 0), "solo": (4, 0)}
    assert (budget["spent"], budget["reserved"]) == (14, 0)
    assert spend_by_key(tmp_path) == {"agent": 7, "other": 3, "solo": 4}


def test_a_restart_in_the_middle_forgets_no_money(node: str, tmp_path: Path) -> None:
    with gateway(node, tmp_path, "--budget", "1000") as gw:
        team = gw.mint(gw.owner, "team", 45)
        agent = gw.mint(team, "agent", 40)

        async def cut() -> list[tuple[int, dict[str, Any]]]:
            async with httpx.AsyncClient(timeout=60,
                                         limits=httpx.Limits(max_connections=100)) as client:
                tasks = [asyncio.ensure_future(_ask(client, gw.url, agent)) for _ in range(30)]
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                os.kill(gw.process.pid, signal.SIGKILL)  # mid-traffic, no goodbye
                return await asyncio.gather(*tasks)

        before = asyncio.run(cut())
        gw.process.wait()
    with gateway(node, tmp_path, "--budget", "1000") as gw:
        keys = gw.keys()
        assert keys["agent"]["reserved"] == keys["team"]["reserved"] == 0
        spent = keys["agent"]["spent"]
        assert served(before) <= spent <= 40  # cut requests are charged their worst case
        after = burst(gw.url, agent, 20)
        assert served(after) == 40 - spent and refused(after, "agent") == 20 - (40 - spent)
        keys = gw.keys()
    assert (keys["agent"]["spent"], keys["team"]["spent"]) == (40, 40)
    assert keys["agent"]["reserved"] == keys["team"]["reserved"] == 0
    assert spend_by_key(tmp_path) == {"agent": 40}
    assert "settled" in (tmp_path / "gateway.log").read_text()


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agoranet", "keys", *args, "--key-store",
                           str(home / "keys.sqlite")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "80"})


def test_bad_keys_get_401_nothing_runs_and_no_secret_leaks(node: str, tmp_path: Path) -> None:
    secrets: list[str] = []
    with gateway(node, tmp_path) as gw:
        secrets.append(gw.owner)
        made = _cli(tmp_path, "create", "cli-agent", "--budget", "0.000050", "--models",
                    "tin*")  # from the CLI, on the running gateway's store
        assert made.returncode == 0, made.stderr
        agent = next(line for line in made.stdout.splitlines() if line.startswith("agn-"))
        sub = gw.mint(agent, "sub", 20)
        doomed = gw.mint(gw.owner, "doomed", 5)
        brief = gw.mint(gw.owner, "brief", 5, expires_in_s=1)
        secrets += [agent, sub, doomed, brief]
        assert _cli(tmp_path, "revoke", "doomed").returncode == 0
        time.sleep(1.2)  # 'brief' expires
        bad = {"none": None, "wrong": "agn-" + "x" * 43, "not ours": "sk-abc",
               "revoked": doomed, "expired": brief}
        for what, key in bad.items():
            for path in ("/v1/chat/completions", "/v1/models"):
                reply = gw.call("POST" if "chat" in path else "GET", path, key,
                                json={"model": "tiny", "messages": QUESTION, "max_tokens": 4})
                assert reply.status_code == 401, (what, reply.text)
                error = reply.json()["error"]
                assert error["code"] == "invalid_api_key" and error["type"], what
                assert key is None or key not in reply.text
        row = httpx.get(f"{gw.root}/agoranet/nodes").json()
        assert row["nodes"][0]["successes"] == row["nodes"][0]["failures"] == 0
        assert row["budget"]["spent"] == row["budget"]["reserved"] == 0  # no node was asked
        denied = gw.call("POST", "/v1/chat/completions", sub,
                         json={"model": "other", "messages": QUESTION})
        assert denied.status_code == 403 and "may not use the model" in denied.text
        # Revoking a parent during traffic: the answer in flight finishes, the next fails.
        async def revoke_during_a_stream() -> tuple[int, str]:
            async with httpx.AsyncClient(timeout=60) as client, client.stream(
                    "POST", f"{gw.url}/chat/completions",
                    headers={"Authorization": f"Bearer {sub}"},
                    json={"model": "tiny", "messages": QUESTION, "max_tokens": 4,
                          "stream": True}) as stream:
                assert stream.status_code == 200
                revoked = await asyncio.to_thread(_cli, tmp_path, "revoke", "cli-agent")
                assert revoked.returncode == 0, revoked.stderr
                return stream.status_code, "".join([c async for c in stream.aiter_text()])

        status, text = asyncio.run(revoke_during_a_stream())
        assert status == 200 and "[DONE]" in text
        after = gw.call("POST", "/v1/chat/completions", sub,
                        json={"model": "tiny", "messages": QUESTION, "max_tokens": 4})
        assert after.status_code == 401 and "'sub' is not usable" in after.text
        listed = _cli(tmp_path, "list")
        assert listed.returncode == 0 and all(len(line) <= 80
                                              for line in listed.stdout.splitlines())
        assert "revoked" in listed.stdout and "sub" in listed.stdout
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "owner.key"]
    assert any(p.name == "gateway.log" for p in written)
    blob = b"".join(p.read_bytes() for p in written)
    found = [s[:8] for s in secrets if s.encode() in blob]
    assert not found, f"secrets written to a file: {found}"
    assert json.loads(_cli(tmp_path, "show", "sub", "--json").stdout)["spent"] == 1


def test_a_key_on_a_paying_gateway_spends_what_the_receipts_say(
        chain: DevChain, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A key's budget against a paid node: it is charged each answer's signed receipt and
    refused (429) once its worst case no longer fits; the money invariants hold after."""
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.rpc import connect
    from agoranet.config import ChainSettings
    from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore
    from agoranet.testing.invariants import BuyerBook, assert_money_invariants, chain_snapshot
    from agoranet.testing.settle import force_settlement

    monkeypatch.setenv(PASSWORD_ENV_VAR, "keys-paid")
    wallets = {}
    for name, index in (("node", 3), ("gateway", 5)):
        wallets[name] = tmp_path / f"{name}.json"
        create_keystore(wallets[name], "keys-paid", scrypt_n=2**10, private_key=bytes.fromhex(
            chain.private_keys[index].removeprefix("0x")))
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    before = chain_snapshot(w3, addresses, [chain.accounts[3], chain.accounts[5]])
    ledger = tmp_path / "ledger.sqlite"
    with node_process(["--model", str(tiny_model), "--price-in", "1000000", "--price-out",
                       "3000000", "--rpc-url", chain.rpc_url, "--keystore",
                       str(wallets["node"]), "--ledger", str(ledger), "--no-fine-tuning",
                       "--no-adapters"]) as paid, \
            gateway(paid, tmp_path / "gw", "--rpc-url", chain.rpc_url, "--keystore",
                    str(wallets["gateway"]), "--deposit", "500000") as gw:
        agent = gw.mint(gw.owner, "agent", 300)  # a request's worst case here is about 90
        replies = [_ask_one(gw.url, agent) for _ in range(12)]
        keys = gw.keys()
    amounts = [r["agoranet"]["amount"] for s, r in replies if s == 200]
    assert amounts and all(a > 0 for a in amounts)
    assert {s for s, _ in replies} == {200, 429}
    assert all(s == 200 for s, _ in replies[:len(amounts)])  # served until it no longer fits
    assert keys["agent"]["spent"] == sum(amounts) <= 300 and keys["agent"]["reserved"] == 0
    assert spend_by_key(tmp_path / "gw") == {"agent": sum(amounts)}
    [store] = {p.parent for p in (tmp_path / "gw").rglob("payer.sqlite")}
    book = BuyerBook.from_payer_store(store, headroom=300)
    assert book.receipted == sum(amounts)
    force_settlement(chain.rpc_url, ledger, chain.private_keys[3])
    assert_money_invariants(w3, addresses, before=before, books=[book], ledger=ledger)


def _ask_one(url: str, key: str) -> tuple[int, dict[str, Any]]:
    reply = httpx.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "tiny", "messages": QUESTION, "max_tokens": 4,
                             "temperature": 0}, timeout=60)
    return reply.status_code, reply.json()


def test_verify_audits_a_paid_node_through_the_gateway_with_a_key(
        chain: DevChain, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`agoranet verify --gateway … --key …`: the challenges are pinned to the audited node,
    the gateway pays it, the key's budget is the audit's (it stops early, saying so, when
    the key runs out); what the key spent is what the receipts say."""
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.rpc import connect
    from agoranet.config import ChainSettings
    from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore
    from agoranet.testing.invariants import BuyerBook, assert_money_invariants, chain_snapshot
    from agoranet.testing.settle import force_settlement

    monkeypatch.setenv(PASSWORD_ENV_VAR, "keys-verify")
    wallets = {}
    for name, index in (("node", 3), ("gateway", 5)):
        wallets[name] = tmp_path / f"{name}.json"
        create_keystore(wallets[name], "keys-verify", scrypt_n=2**10,
                        private_key=bytes.fromhex(chain.private_keys[index].removeprefix("0x")))
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    before = chain_snapshot(w3, addresses, [chain.accounts[3], chain.accounts[5]])
    ledger = tmp_path / "ledger.sqlite"

    def verify(node: str, gateway_url: str, key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agoranet", "verify", "--node", node, "--reference",
             str(tiny_model), "--model", "tiny", "--gateway", gateway_url, "--key", key],
            capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "200"},
            check=False)

    with node_process(["--model", str(tiny_model), "--price-in", "100000", "--price-out",
                       "300000", "--rpc-url", chain.rpc_url, "--keystore",
                       str(wallets["node"]), "--ledger", str(ledger), "--no-fine-tuning",
                       "--no-adapters"]) as paid, \
            gateway(paid, tmp_path / "gw", "--rpc-url", chain.rpc_url, "--keystore",
                    str(wallets["gateway"]), "--deposit", "500000") as gw:
        audit = gw.mint(gw.owner, "audit", 5000)
        full = verify(paid, gw.url, audit)
        assert full.returncode == 0, full.stdout + full.stderr
        assert "pass" in full.stdout and "stopped early" not in full.stdout
        small = gw.mint(gw.owner, "small-audit", 100)
        cut = verify(paid, gw.url, small)
        assert cut.returncode == 0, cut.stdout + cut.stderr
        assert "stopped early: the key's budget allowed" in cut.stdout
        wrong = verify(paid, gw.url, "agn-" + "0" * 64)
        assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
        assert "key" in wrong.stderr
        keys = gw.keys()
    charged = [int(line.split("charged the key ")[1].split()[0])
               for out in (full.stdout, cut.stdout) for line in out.splitlines()
               if "charged the key" in line]
    assert len(charged) == 2 and all(c > 0 for c in charged)
    assert [keys["audit"]["spent"], keys["small-audit"]["spent"]] == charged
    assert charged[1] <= 100 and keys["audit"]["reserved"] == keys["small-audit"]["reserved"] == 0
    [store] = {p.parent for p in (tmp_path / "gw").rglob("payer.sqlite")}
    book = BuyerBook.from_payer_store(store, headroom=5100)
    assert book.receipted == sum(charged)
    force_settlement(chain.rpc_url, ledger, chain.private_keys[3])
    assert_money_invariants(w3, addresses, before=before, books=[book], ledger=ledger)
