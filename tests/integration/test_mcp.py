"""The MCP server with real processes: a tiny-model node, a keyed gateway, and the official
``mcp`` client driving ``agoranet mcp`` over stdio (launched exactly as README's config
snippet says) and the gateway's ``/mcp`` over streamable HTTP.

The node charges only output (price_in 0, 250_000 per million tokens) and every question
asks for at most 4 tokens: each answer's worst case and actual cost are both exactly 1
base unit, so a key with ``k`` base units left affords exactly ``k`` questions. The node
trains for free, so ``fine_tune`` runs on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from agoranet.agents.mcp_server import TOOLS
from agoranet.gateway.spendlog import SpendLog
from agoranet.node.launcher import free_port, wait_healthy
from agoranet.tuning.housestyle import write_house_style
from helpers import ROOT, node_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

QUESTION = "Tell me about the library."


@pytest.fixture(scope="module")
def node(tiny_model: Path) -> Iterator[str]:
    with node_process(["--model", str(tiny_model), "--price-in", "0", "--price-out", "250000",
                       "--free", "--no-adapters", "--max-active", "4"]) as url:
        yield url


@dataclass
class Gateway:
    root: str
    port: int
    home: Path  # what AGORANET_HOME is for it: its state is in home/gateway

    @property
    def owner(self) -> str:
        return (self.home / "gateway" / "owner.key").read_text().strip()

    def keys(self) -> dict[str, dict[str, Any]]:
        listed = httpx.get(f"{self.root}/agoranet/keys", timeout=30,
                           headers={"Authorization": f"Bearer {self.owner}"}).json()["data"]
        return {k["name"]: k for k in listed}


@contextmanager
def gateway(node: str, home: Path) -> Iterator[Gateway]:
    """``agoranet gateway`` keeping its state where the default ``AGORANET_HOME`` would."""
    port = free_port()
    state = home / "gateway"
    state.mkdir(parents=True, exist_ok=True)
    with (home / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "agoranet", "-vv", "gateway", "--node", node, "--budget",
             "1000", "--spend-log", str(state / "spend.sqlite"), "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, f"{root}/health", 60)
        deadline = time.monotonic() + 30
        while not httpx.get(f"{root}/agoranet/nodes").json()["nodes"][0]["models"]:
            assert time.monotonic() < deadline, "the gateway never read the node's offer"
            time.sleep(0.1)
        yield Gateway(root, port, home)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def readme_config() -> dict[str, Any]:
    """README's MCP config snippet: the JSON block that has ``mcpServers``."""
    text = (ROOT / "README.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)
              if "mcpServers" in b]
    assert len(blocks) == 1, "README should have one MCP config snippet"
    server: dict[str, Any] = blocks[0]["mcpServers"]["agoranet"]
    return server


@asynccontextmanager
async def over_stdio(gw: Gateway, key: str | None = None) -> AsyncIterator[ClientSession]:
    """README's command, as a host launches it, for ``gw`` (its home and port by env)."""
    config = readme_config()
    venv_bin = str(Path(sys.executable).parent)
    command = shutil.which(config["command"], path=venv_bin + os.pathsep + os.environ["PATH"])
    assert command is not None
    env = {**config.get("env", {}), "AGORANET_HOME": str(gw.home),
           "AGORANET_GATEWAY_PORT": str(gw.port), "OMP_NUM_THREADS": "1"}
    if key is not None:
        env["AGORANET_KEY"] = key
    params = StdioServerParameters(command=command, args=config["args"], env=env)
    with (gw.home / "mcp-stdio.log").open("a") as errors:
        async with stdio_client(params, errlog=errors) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def over_http(gw: Gateway, key: str) -> AsyncIterator[ClientSession]:
    """The gateway's ``/mcp`` with ``key`` as the bearer."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"},
                              timeout=httpx2.Timeout(120.0))
    async with http, streamable_http_client(f"{gw.root}/mcp", http_client=http) as (
            read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def text(result: CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent)
    return result.content[0].text


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, text(result)
    answer: dict[str, Any] = json.loads(text(result))
    return answer


async def refused(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert result.is_error, text(result)
    message = text(result)
    assert "Traceback" not in message and "File \"" not in message and "\n" not in message
    return message


def spend_by_key(gw: Gateway) -> dict[str, int]:
    log = SpendLog(gw.home / "gateway" / "spend.sqlite")
    try:
        return {key: amount for key, _, _, amount, _ in log.totals("key")}
    finally:
        log.close()


Connect = Any  # over_stdio or over_http: (gateway, key) -> an MCP client session


async def the_agent_story(gw: Gateway, connect: Connect, sub_name: str,
                          owner: str | None) -> None:
    """Lists the tools, asks, reads the budget going down, mints a sub-agent key, uses it
    until its cap, and gets a plain tool error there and for bad arguments."""
    session_for: Any = connect
    async with session_for(gw, owner) as session:
        listed = await session.list_tools()
        assert {t.name for t in listed.tools} == set(TOOLS)
        ask = next(t for t in listed.tools if t.name == "ask")
        assert set(ask.input_schema["properties"]) == {
            "prompt", "system", "model", "max_tokens", "max_price_out"}
        [model] = (await call(session, "list_models"))["models"]
        assert model["id"] == "tiny" and model["nodes"] == 1
        assert model["cheapest_price"] == {"input_per_million": 0, "output_per_million": 250000}
        assert {"fine_tuning", "free_fine_tuning"} <= set(model["capabilities"])
        assert "adapters" not in model["capabilities"]  # the node takes none
        before = await call(session, "budget")
        assert before["key"] == "owner" and before["reserved"] == 0
        answer = await call(session, "ask", prompt=QUESTION, system="Be brief.", max_tokens=4)
        assert answer["answer"] and answer["model"] == "tiny"
        assert answer["node"] == gw_node(gw) and answer["cost"] == 1
        assert answer["usage"]["completion_tokens"] <= 4
        after = await call(session, "budget")
        assert after["spent"] == before["spent"] + 1 and after["reserved"] == 0
        assert after["available"] == before["available"] - 1  # the global budget: 1000
        made = await call(session, "create_subagent_key", name=sub_name, budget=2)
        assert made["key"].startswith("agn-") and made["parent"] == "owner"
        assert made["budget"] == 2
        # Bad arguments and bad requests: a plain message, nothing run, nothing charged.
        message = await refused(session, "ask", prompt=QUESTION, max_tokens=0)
        assert message.startswith("bad arguments for ask: 'max_tokens'"), message
        message = await refused(session, "ask", prompt=QUESTION, model="no-such-model",
                                max_tokens=4)
        assert "no node on the network serves 'no-such-model'" in message, message
        message = await refused(session, "create_subagent_key", name="no spaces", budget=1)
        assert "400 invalid_request_error" in message and "a key's name is" in message, message
        assert (await call(session, "budget"))["spent"] == after["spent"]
    async with session_for(gw, made["key"]) as sub:
        for _ in range(2):
            spent = await call(sub, "ask", prompt=QUESTION, max_tokens=4)
            assert spent["cost"] == 1 and spent["node"] == gw_node(gw)
        view = await call(sub, "budget")
        assert (view["key"], view["spent"], view["remaining"], view["available"]) == (
            sub_name, 2, 0, 0)
        assert view["limited_by"] == sub_name
        message = await refused(sub, "ask", prompt=QUESTION, max_tokens=4)
        assert "insufficient_quota" in message and \
            f"key '{sub_name}' has 0 base units left of 2" in message, message
        message = await refused(sub, "create_subagent_key", name=f"{sub_name}-child", budget=1)
        assert f"key '{sub_name}' has 0 base units left" in message, message
    keys = gw.keys()
    assert (keys[sub_name]["spent"], keys[sub_name]["reserved"]) == (2, 0)
    # The gateway logs at debug level (-vv): still, no secret is in any file it wrote.
    written = b"".join(p.read_bytes() for p in gw.home.rglob("*")
                       if p.is_file() and p.name != "owner.key")
    assert gw.owner.encode() not in written and made["key"].encode() not in written


def gw_node(gw: Gateway) -> str:
    [row] = httpx.get(f"{gw.root}/agoranet/nodes").json()["nodes"]
    return str(row["url"])


def test_readme_snippet_over_stdio_asks_spends_mints_and_hits_the_cap(
        node: str, tmp_path: Path) -> None:
    with gateway(node, tmp_path) as gw:
        # No key given: `agoranet mcp` acts as the owner key the gateway wrote in its home.
        anyio.run(the_agent_story, gw, over_stdio, "stdio-sub", None)
        keys = gw.keys()
    assert keys["owner"]["spent"] == 3 and keys["owner"]["reserved"] == 0
    assert spend_by_key(gw) == {"owner": 1, "stdio-sub": 2}


def test_gateway_mcp_over_http_acts_as_the_bearer_key(node: str, tmp_path: Path) -> None:
    with gateway(node, tmp_path) as gw:
        for secret in (None, "agn-" + "x" * 43):  # no key, a wrong one: 401, before MCP
            headers = {"Authorization": f"Bearer {secret}"} if secret else {}
            reply = httpx.post(f"{gw.root}/mcp", headers=headers, json={
                "jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=30)
            assert reply.status_code == 401, reply.text
            assert reply.json()["error"]["code"] == "invalid_api_key"
        anyio.run(the_agent_story, gw, over_http, "http-sub", gw.owner)
        keys = gw.keys()
    assert keys["owner"]["spent"] == 3 and keys["owner"]["reserved"] == 0
    assert spend_by_key(gw) == {"owner": 1, "http-sub": 2}


def test_fine_tune_and_follow_it_through_mcp(node: str, tmp_path: Path) -> None:
    examples = [json.loads(line) for line in
                write_house_style(tmp_path / "style.jsonl", repeats=1).read_text().splitlines()]

    async def story(gw: Gateway, other: str) -> None:
        async with over_http(gw, gw.owner) as session:
            message = await refused(session, "fine_tune", model="tiny",
                                    examples=[{"text": "no messages"}])
            assert "example 1 must be an object with a list 'messages'" in message, message
            message = await refused(session, "fine_tune", model="tiny", examples=[])
            assert message.startswith("bad arguments for fine_tune: 'examples'"), message
            job = await call(session, "fine_tune", model="tiny", examples=examples, epochs=1,
                             seed=3)
            assert job["node"] == gw_node(gw) and job["status"] in ("queued", "running")
            deadline = time.monotonic() + 300
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                assert time.monotonic() < deadline, job
                await anyio.sleep(0.5)
                job = await call(session, "fine_tune_status", job_id=job["id"],
                                 node=job["node"])
            assert job["status"] == "succeeded", job
            assert job["fine_tuned_model"].startswith("tiny@adapter:")
            assert job["trained_steps"] == job["total_steps"] > 0 and job["charged"] == 0
            message = await refused(session, "fine_tune_status", job_id=job["id"],
                                    node="http://127.0.0.1:1/v1")
            assert "the gateway knows no node at" in message, message
        async with over_http(gw, other) as stranger:  # another key does not see the job
            message = await refused(stranger, "fine_tune_status", job_id=job["id"],
                                    node=job["node"])
            assert job["id"] in message, message
        # a rotated key keeps its jobs: nodes know it by the key's lasting id, not its secret
        before = gw.owner
        rotated = subprocess.run([sys.executable, "-m", "agoranet", "keys", "rotate", "owner"],
                                 env={**os.environ, "AGORANET_HOME": str(gw.home)},
                                 capture_output=True, text=True, timeout=120, check=False)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        assert gw.owner != before
        async with over_http(gw, gw.owner) as session:
            again = await call(session, "fine_tune_status", job_id=job["id"], node=job["node"])
            assert again["id"] == job["id"] and again["status"] == "succeeded", again

    with gateway(node, tmp_path / "gw") as gw:
        other = httpx.post(f"{gw.root}/agoranet/keys", json={"name": "other", "budget": 5},
                           headers={"Authorization": f"Bearer {gw.owner}"}, timeout=30)
        assert other.status_code == 201, other.text
        anyio.run(story, gw, other.json()["key"])



def test_no_gateway_is_a_plain_tool_error(tmp_path: Path) -> None:
    async def story() -> None:
        nobody = Gateway("http://127.0.0.1:1", free_port(), tmp_path)  # nothing listens
        async with over_stdio(nobody, key="agn-unused") as session:
            message = await refused(session, "budget")
            assert f"the gateway at http://127.0.0.1:{nobody.port} did not answer" in message
            assert "is `agoranet gateway` running?" in message, message

    anyio.run(story)
