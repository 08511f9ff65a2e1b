"""A keyed gateway with a wallet pays a node that charges for training (real processes).

A dev chain, a paid node that trains the tiny model (3 base units a training token), and
``agoranet gateway`` with a wallet and keys. A key whose budget cannot cover a job's
maximum gets a 429 and the node never gets a voucher (nor a job); a key that can afford
it has the job paid on a channel of its own, the maximum reserved while it trains, and,
once it has ended, is charged the node's signed receipt: its spend, its spend-log row
(request id: the job's id) and the payer's receipts agree, and nothing stays reserved.
The money invariants hold on chain after the node's claim.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import DevChain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.gateway.spendlog import SpendLog
from agoranet.market import TokenPrices, cost
from agoranet.node.launcher import free_port, wait_healthy
from agoranet.payments.receipts import Receipt
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore
from agoranet.testing.invariants import BuyerBook, assert_money_invariants, chain_snapshot
from agoranet.testing.settle import force_settlement
from agoranet.tuning.housestyle import write_house_style

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PASSWORD = "gw-tune-Password-1"
PRICE_TRAINING = 3_000_000  # 3 base units a training token
ENDED = ("succeeded", "failed", "cancelled")


@contextmanager
def process(args: list[str], log: Path, health: str, env: dict[str, str]) -> Iterator[None]:
    with log.open("ab") as out:
        running = subprocess.Popen([sys.executable, "-m", "agoranet", *args], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(running, health, 120)
        yield
    finally:
        running.terminate()
        try:
            running.wait(timeout=15)
        except subprocess.TimeoutExpired:
            running.kill()
            running.wait()


def call(root: str, method: str, path: str, key: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, root + path, headers={"Authorization": f"Bearer {key}"},
                         timeout=120, **kw)


@asynccontextmanager
async def over_mcp(root: str, key: str) -> AsyncIterator[ClientSession]:
    """The gateway's ``/mcp`` (streamable HTTP) with ``key`` as the bearer."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"},
                              timeout=httpx2.Timeout(120.0))
    async with http, streamable_http_client(f"{root}/mcp", http_client=http) as (
            read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def tool(session: ClientSession, name: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(name, arguments)
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent)
    assert not result.is_error, result.content[0].text
    answer: dict[str, Any] = json.loads(result.content[0].text)
    return answer


async def refused_over_mcp(root: str, key: str, body: dict[str, Any]) -> str:
    async with over_mcp(root, key) as session:
        result = await session.call_tool("fine_tune", body)
    assert result.is_error and isinstance(result.content[0], TextContent)
    return result.content[0].text


async def tune_over_mcp(root: str, key: str,
                        body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``fine_tune``, then ``fine_tune_status`` until the job has ended and its
    reservation is settled; the job and the key's budget then."""
    async with over_mcp(root, key) as session:
        job = await tool(session, "fine_tune", **body)
        assert job["status"] in ("queued", "running", *ENDED), job
        held = await tool(session, "budget")
        assert held["reserved"] in (0, job["max_charge"]), held
        deadline = time.monotonic() + 300
        while True:
            job = await tool(session, "fine_tune_status", job_id=job["id"], node=job["node"])
            budget = await tool(session, "budget")
            if job["status"] in ENDED and budget["reserved"] == 0:
                return job, budget
            assert budget["reserved"] == job["max_charge"], budget
            assert time.monotonic() < deadline, (job, budget)
            await anyio.sleep(0.3)


def vouchers(ledger: Path) -> int:
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM vouchers").fetchone()[0])
    finally:
        db.close()


def test_a_key_pays_a_fine_tuning_job_within_its_budget(
        chain: DevChain, tiny_model: Path, tmp_path: Path) -> None:
    wallets = {}
    for name, index in (("node", 6), ("gateway", 8)):
        wallets[name] = tmp_path / f"{name}.json"
        create_keystore(wallets[name], PASSWORD, scrypt_n=2**10, private_key=bytes.fromhex(
            chain.private_keys[index].removeprefix("0x")))
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    before = chain_snapshot(w3, addresses, [chain.accounts[6], chain.accounts[8]])
    env = {**os.environ, PASSWORD_ENV_VAR: PASSWORD, "OMP_NUM_THREADS": "1",
           "AGORANET_NODE_FINE_TUNING_DIR": str(tmp_path / "tuning")}
    ledger = tmp_path / "ledger.sqlite"
    node_port, gw_port = free_port(), free_port()
    node = f"http://127.0.0.1:{node_port}/v1"
    root = f"http://127.0.0.1:{gw_port}"
    home = tmp_path / "gw"
    examples = [json.loads(line) for line in write_house_style(
        tmp_path / "style.jsonl", repeats=1).read_text().splitlines()]
    with process(["node", "--model", str(tiny_model), "--price-in", "1000000", "--price-out",
                  "3000000", "--price-training", str(PRICE_TRAINING), "--rpc-url",
                  chain.rpc_url, "--keystore", str(wallets["node"]), "--ledger", str(ledger),
                  "--no-adapters", "--port", str(node_port)],
                 tmp_path / "node.log", f"http://127.0.0.1:{node_port}/health", env), \
            process(["-vv", "gateway", "--node", node, "--spend-log",
                     str(home / "spend.sqlite"), "--rpc-url", chain.rpc_url, "--keystore",
                     str(wallets["gateway"]), "--deposit", "500000", "--port", str(gw_port)],
                    tmp_path / "gateway.log", f"{root}/health", env):
        deadline = time.monotonic() + 30
        while not httpx.get(f"{root}/agoranet/nodes").json()["nodes"][0]["models"]:
            assert time.monotonic() < deadline, "the gateway never read the node's offer"
            time.sleep(0.1)
        owner = (home / "owner.key").read_text().strip()
        [model] = call(root, "GET", "/agoranet/models", owner).json()["data"]
        assert "fine_tuning" in model["capabilities"]
        assert "free_fine_tuning" not in model["capabilities"]
        keys = {}
        for name, budget in (("poor", 10), ("tuner", 1_000_000)):
            made = call(root, "POST", "/agoranet/keys", owner, json={"name": name,
                                                                    "budget": budget})
            assert made.status_code == 201, made.text
            keys[name] = made.json()["key"]
        body = {"model": "tiny", "examples": examples, "epochs": 1, "seed": 2}

        # A budget that cannot cover the job's maximum: 429, no voucher, no job, no channel.
        poor = call(root, "POST", "/agoranet/fine_tuning/jobs", keys["poor"], json=body)
        assert poor.status_code == 429, poor.text
        error = poor.json()["error"]
        assert error["type"] == "insufficient_quota" and error["code"] == "insufficient_quota"
        assert "key 'poor' has 10 base units left of 10; this request may cost up to" \
            in error["message"], error
        message = anyio.run(refused_over_mcp, root, keys["poor"], body)  # the tool says so too
        assert "key 'poor' has 10 base units left" in message and "\n" not in message, message
        assert vouchers(ledger) == 0
        assert not (home / "channels" / "jobs").exists()
        budget = call(root, "GET", "/agoranet/budget", keys["poor"]).json()
        assert (budget["spent"], budget["reserved"]) == (0, 0)

        # A key that affords it, through the MCP tools: the job is paid, its maximum held
        # while it trains, and fine_tune_status settles it once it has ended.
        job, budget = anyio.run(tune_over_mcp, root, keys["tuner"], body)
        maximum = job["max_charge"]
        assert job["node"] == node and maximum > 0 and maximum % 3 == 0
        assert vouchers(ledger) == 1
        path = f"/agoranet/fine_tuning/jobs/{job['id']}"
        assert job["status"] == "succeeded", job
        assert job["fine_tuned_model"].startswith("tiny@adapter:")
        # trained to the end: charged the whole training, as the receipt says
        assert job["charged"] == maximum == cost(TokenPrices(PRICE_TRAINING, 0),
                                                 job["trained_tokens"], 0)
        assert (budget["spent"], budget["reserved"]) == (maximum, 0)
        again = call(root, "GET", path, keys["tuner"], params={"node": node})  # settled once
        assert again.status_code == 200
        assert call(root, "GET", "/agoranet/budget", keys["tuner"]).json()["spent"] == maximum
        listed = {k["name"]: k for k in call(root, "GET", "/agoranet/keys", owner).json()["data"]}
        assert (listed["tuner"]["spent"], listed["tuner"]["reserved"]) == (maximum, 0)
        assert (listed["owner"]["spent"], listed["owner"]["reserved"]) == (maximum, 0)
    log = SpendLog(home / "spend.sqlite")
    try:
        [row] = log.rows(job["id"])
        total = log.total()
    finally:
        log.close()
    assert (row.outcome, row.amount, row.key, row.prompt_tokens) == (
        "ok", maximum, "tuner", job["trained_tokens"])
    assert row.receipt is not None
    assert Receipt.from_json(json.loads(row.receipt)).amount == maximum
    assert total == maximum  # nothing else was spent
    # the job's channel: its receipts are the job's, the node claims them, nothing more
    [store] = {p.parent for p in (home / "channels" / "jobs").rglob("payer.sqlite")}
    book = BuyerBook.from_payer_store(store, headroom=0)
    assert book.receipted == maximum == book.spent
    force_settlement(chain.rpc_url, ledger, chain.private_keys[6])
    report = assert_money_invariants(w3, addresses, before=before, books=[book], ledger=ledger)
    [facts] = report.channels
    assert facts.claimed == maximum <= total  # claimed <= receipted, recorded spend >= claimed


def spend_rows(home: Path) -> list[Any]:
    log = SpendLog(home / "spend.sqlite")
    try:
        return log.rows()
    finally:
        log.close()


def test_a_job_still_training_across_a_gateway_restart_is_settled(
        chain: DevChain, tiny_model: Path, tmp_path: Path) -> None:
    """The gateway is killed while a paid job trains: the restarted gateway settles the
    key's reservation at the job's maximum (as for any request in flight), keeps the job's
    channel for it, and when the job ends adopts its receipt; the channel then pays the
    next job, charged its receipt. The money invariants hold."""
    wallets = {}
    for name, index in (("node", 4), ("gateway", 9)):
        wallets[name] = tmp_path / f"{name}.json"
        create_keystore(wallets[name], PASSWORD, scrypt_n=2**10, private_key=bytes.fromhex(
            chain.private_keys[index].removeprefix("0x")))
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    before = chain_snapshot(w3, addresses, [chain.accounts[4], chain.accounts[9]])
    env = {**os.environ, PASSWORD_ENV_VAR: PASSWORD, "OMP_NUM_THREADS": "1",
           "AGORANET_NODE_FINE_TUNING_DIR": str(tmp_path / "tuning")}
    ledger = tmp_path / "ledger.sqlite"
    node_port, gw_port = free_port(), free_port()
    node = f"http://127.0.0.1:{node_port}/v1"
    root = f"http://127.0.0.1:{gw_port}"
    home = tmp_path / "gw"
    examples = [json.loads(line) for line in write_house_style(
        tmp_path / "style.jsonl", repeats=1).read_text().splitlines()]
    gateway_args = ["-vv", "gateway", "--node", node, "--spend-log", str(home / "spend.sqlite"),
                    "--rpc-url", chain.rpc_url, "--keystore", str(wallets["gateway"]),
                    "--deposit", "500000", "--port", str(gw_port)]
    with process(["node", "--model", str(tiny_model), "--price-in", "1000000", "--price-out",
                  "3000000", "--price-training", str(PRICE_TRAINING), "--rpc-url",
                  chain.rpc_url, "--keystore", str(wallets["node"]), "--ledger", str(ledger),
                  "--no-adapters", "--port", str(node_port)],
                 tmp_path / "node.log", f"http://127.0.0.1:{node_port}/health", env):
        with (tmp_path / "gateway.log").open("ab") as out:
            first = subprocess.Popen([sys.executable, "-m", "agoranet", *gateway_args],
                                     stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_healthy(first, f"{root}/health", 120)
            deadline = time.monotonic() + 30
            while not httpx.get(f"{root}/agoranet/nodes").json()["nodes"][0]["models"]:
                assert time.monotonic() < deadline, "the gateway never read the node's offer"
                time.sleep(0.1)
            owner = (home / "owner.key").read_text().strip()
            made = call(root, "POST", "/agoranet/keys", owner,
                        json={"name": "tuner", "budget": 1_000_000})
            assert made.status_code == 201, made.text
            key = made.json()["key"]
            started = call(root, "POST", "/agoranet/fine_tuning/jobs", key, json={
                "model": "tiny", "examples": examples, "epochs": 12})
            assert started.status_code == 200, started.text
            job = started.json()
            maximum = job["max_charge"]
            assert call(root, "GET", "/agoranet/budget", key).json()["reserved"] == maximum
            training = call(root, "GET", f"/agoranet/fine_tuning/jobs/{job['id']}", key,
                            params={"node": node}).json()
            assert training["status"] in ("queued", "running"), training  # still training
        finally:
            first.kill()  # SIGKILL: the gateway dies with the job held
            first.wait(timeout=10)
        with process(gateway_args, tmp_path / "gateway.log", f"{root}/health", env):
            deadline = time.monotonic() + 30
            while not httpx.get(f"{root}/agoranet/nodes").json()["nodes"][0]["models"]:
                assert time.monotonic() < deadline, "the gateway never read the node's offer"
                time.sleep(0.1)
            # the key store settled the job's reservation at its maximum when it started
            budget = call(root, "GET", "/agoranet/budget", key).json()
            assert (budget["spent"], budget["reserved"]) == (maximum, 0)
            lost = [r for r in spend_rows(home) if r.outcome == "lost"]
            assert [(r.amount, r.key) for r in lost] == [(maximum, "tuner")]
            path = f"/agoranet/fine_tuning/jobs/{job['id']}"
            deadline = time.monotonic() + 400
            while True:
                job = call(root, "GET", path, key, params={"node": node}).json()
                [row] = [r for r in spend_rows(home) if r.request_id == job["id"]]
                if row.outcome != "held":
                    break
                assert job["status"] in ("queued", "running", *ENDED), job
                assert time.monotonic() < deadline, job
                time.sleep(0.5)
            assert job["status"] == "succeeded", job
            assert (row.outcome, row.amount, row.key) == ("recovered", 0, "tuner")
            assert row.receipt is not None
            charged = Receipt.from_json(json.loads(row.receipt)).amount
            assert charged == job["charged"] == maximum
            assert not list((home / "channels" / "jobs").rglob("job.json"))
            # the channel is free again: the next job is paid on it, charged its receipt
            second = call(root, "POST", "/agoranet/fine_tuning/jobs", key, json={
                "model": "tiny", "examples": examples[:4], "epochs": 1})
            assert second.status_code == 200, second.text
            path = f"/agoranet/fine_tuning/jobs/{second.json()['id']}"
            deadline = time.monotonic() + 300
            while True:
                done = call(root, "GET", path, key, params={"node": node}).json()
                budget = call(root, "GET", "/agoranet/budget", key).json()
                if done["status"] in ENDED and budget["reserved"] == 0:
                    break
                assert time.monotonic() < deadline, (done, budget)
                time.sleep(0.3)
            assert done["status"] == "succeeded" and done["charged"] > 0, done
            assert budget["spent"] == maximum + done["charged"]
    stores = {p.parent for p in (home / "channels" / "jobs").rglob("payer.sqlite")}
    assert len(stores) == 1  # one job at a time: both jobs on the same channel
    book = BuyerBook.from_payer_store(stores.pop(), headroom=0)
    assert book.receipted == maximum + done["charged"] == book.spent
    recorded = sum(r.amount for r in spend_rows(home))
    assert recorded == maximum + done["charged"]  # the first at its maximum ("lost")
    force_settlement(chain.rpc_url, ledger, chain.private_keys[4])
    report = assert_money_invariants(w3, addresses, before=before, books=[book], ledger=ledger)
    [facts] = report.channels
    assert facts.claimed <= facts.receipted and recorded >= facts.claimed
