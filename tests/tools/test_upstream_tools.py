"""Prices on another MCP server's tools: ``agoranet tools serve --mcp-upstream 'CMD'``.

The upstream is a tiny stdio MCP server (``python -m agoranet.testing.tool_kit``) that
knows nothing of payments; the tool server starts it, lists its tools and sells them at
the ``--price`` given, over HTTP and MCP. A call refused here never reaches it; a tool
that fails upstream is charged nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from x402.http.clients import x402HttpxClient

from agoranet.node.launcher import free_port, running_command
from agoranet.payments.wallet import PASSWORD_ENV_VAR

from .support import (
    PASSWORD,
    Chain,
    ToolProcess,
    ledger_receipts,
    sdk_client,
    serve_tools,
    token_balance,
    wait_claimed,
)
from .test_paid_tools import mcp_session, pay_over_mcp, post, receipt_of, settle_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

UPSTREAM = f"{sys.executable} -m agoranet.testing.tool_kit"


@pytest.fixture(scope="module")
def priced(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolProcess]:
    with serve_tools(chain, tmp_path_factory.mktemp("upstream"),
                     ["--mcp-upstream", UPSTREAM, "--price", "shout=300", "--price", "*=100"],
                     key_index=5) as process:
        yield process


def upstream_calls(process: ToolProcess) -> list[str]:
    return [c for c in process.calls() if c.startswith("upstream ")]


async def test_upstream_tools_sold_at_their_prices(chain: Chain, priced: ToolProcess,
                                                   payer: LocalAccount) -> None:
    listing = {t["name"]: t for t in httpx.get(f"{priced.root}/tools").json()["data"]}
    assert {n: t["price"] for n, t in listing.items()} == {"shout": 300, "add": 100,
                                                           "fail": 100}
    assert listing["add"]["input_schema"]["required"] == ["a", "b"]  # the upstream's own
    before = token_balance(chain, payer.address)
    async with x402HttpxClient(sdk_client(chain, payer, "exact"), timeout=30.0) as http:
        status, body, settle = await post(http, priced.root, "shout", {"text": "hello"})
        assert (status, body) == (200, {"result": "HELLO"})
        assert settle is not None and receipt_of(settle, priced.seller.address).amount == 300
        status, body, settle = await post(http, priced.root, "fail", {"reason": "no luck"})
        assert status == 422 and settle is None
        assert "no luck" in body["error"]["message"]
        assert "nothing was charged" in body["error"]["message"]
    assert token_balance(chain, payer.address) == before - 300
    assert upstream_calls(priced) == ["upstream shout", "upstream fail"]

    async with mcp_session(priced.root) as session:
        listed = {t.name for t in (await session.list_tools()).tools}
        assert listed == {"shout", "add", "fail"}
        batch = sdk_client(chain, payer, "batch-settlement")
        result, _ = await pay_over_mcp(session, batch, "add", {"a": 2, "b": 3})
        assert result.structured_content == {"result": 5}
        receipt = receipt_of(settle_of(result), priced.seller.address)
        assert receipt.amount == 100
        # refused here, never forwarded: no payment, arguments against the upstream schema
        unpaid = await session.call_tool("shout", {"text": "x"})
        assert unpaid.is_error
        bad = await session.call_tool("add", {"a": "two", "b": 3})
        assert bad.is_error
    assert upstream_calls(priced) == ["upstream shout", "upstream fail", "upstream add"]
    assert ledger_receipts(priced.ledger, receipt.channel_id) == [100]
    wait_claimed(chain, receipt.channel_id, 100)


def test_unpriced_upstream_tool_stops_the_start(chain: Chain, tmp_path: Path,
                                                priced: ToolProcess) -> None:
    keystore = priced.ledger.parent / "keystore.json"
    env = {**os.environ, PASSWORD_ENV_VAR: PASSWORD}
    done = subprocess.run(
        [sys.executable, "-m", "agoranet", "tools", "serve", "--mcp-upstream", UPSTREAM,
         "--price", "shout=300", "--port", str(free_port()), "--rpc-url", chain.dev.rpc_url,
         "--keystore", str(keystore), "--ledger", str(tmp_path / "l.sqlite")],
        capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0
    assert "add, fail have no price" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


async def test_upstream_over_streamable_http(chain: Chain, tmp_path: Path,
                                             payer: LocalAccount) -> None:
    """``--mcp-upstream-url``: a free tool server's /mcp, sold again at new prices."""
    (tmp_path / "paid").mkdir()
    with running_command(["tools", "serve", "agoranet.testing.tool_kit:tools", "--free"],
                         output=tmp_path / "free.log") as free:
        upstream = free.removesuffix("/v1") + "/mcp"
        with serve_tools(chain, tmp_path / "paid", ["--mcp-upstream-url", upstream,
                                                    "--price", "echo=250", "--price", "*=90"],
                         key_index=6) as resold:
            listing = {t["name"]: t["price"]
                       for t in httpx.get(f"{resold.root}/tools").json()["data"]}
            assert listing == {"echo": 250, "count": 90, "boom": 90}
            async with x402HttpxClient(sdk_client(chain, payer, "exact"), timeout=30.0) as http:
                status, body, settle = await post(http, resold.root, "count",
                                                  {"text": "two words"})
                assert (status, body) == (200, {"words": 2, "characters": 9})
                assert settle is not None
                assert receipt_of(settle, resold.seller.address).amount == 90
                status, body, settle = await post(http, resold.root, "echo", {"text": 3})
                assert status == 400 and settle is None  # the upstream's schema, here
