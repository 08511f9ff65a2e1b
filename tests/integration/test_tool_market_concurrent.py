"""Calls at once to one tool seller, through the gateway, with real processes on the dev chain.

A tool server sells ``wait`` (``agoranet.testing.slow_tools``: 1,000 base units, sleeps
half a second); a keyed gateway with a wallet pays it over at most three channels
(``AGORANET_GATEWAY_TOOL_CHANNELS=3``). Five calls sent together all answer: while the
first ones run, the others are paid over further channels (each opened with its own
deposit), and the calls beyond three wait for a channel handed back -- none is refused
for a busy channel, none waits for all the others. Per channel the buyer's spend log,
the seller's receipts and what the seller claimed on chain agree to the base unit, and
the money invariants hold (claimed <= receipted, recorded spend >= claimed).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import DevChain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.gateway.spendlog import SpendLog
from agoranet.node.launcher import running_command
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore
from agoranet.testing.slow_tools import WAIT_PRICE
from tools.support import (
    PASSWORD,
    Chain,
    claimed_on_chain,
    ledger_receipts,
    serve_tools,
    wait_claimed,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CALLS, CHANNELS = 5, 3


@pytest.fixture(scope="module")
def dev(chain: DevChain) -> Chain:
    return Chain(chain, connect(chain.rpc_url),
                 resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url)))


def test_calls_at_once_to_one_seller_go_over_several_channels(
        dev: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV_VAR, PASSWORD)
    monkeypatch.setenv("AGORANET_GATEWAY_REFRESH_S", "1")
    monkeypatch.setenv("AGORANET_GATEWAY_TOOL_CHANNELS", str(CHANNELS))
    wallet = tmp_path / "gateway.json"
    create_keystore(wallet, PASSWORD, private_key=bytes.fromhex(
        dev.dev.private_keys[5].removeprefix("0x")), scrypt_n=2**10)
    seller_dir = tmp_path / "seller"
    seller_dir.mkdir()
    spend_log = tmp_path / "gw" / "spend.sqlite"
    with serve_tools(dev, seller_dir, ["agoranet.testing.slow_tools:tools"]) as seller, \
            running_command(["-v", "gateway", "--rpc-url", dev.dev.rpc_url, "--keystore",
                             str(wallet), "--deposit", "100000", "--budget", "1000000",
                             "--spend-log", str(spend_log), "--tools", seller.root],
                            output=tmp_path / "gateway.log") as url:
        root = url.removesuffix("/v1")
        owner = {"Authorization": "Bearer " + (tmp_path / "gw" / "owner.key").read_text()
                 .strip()}
        _wait_listed(root, owner)
        made = httpx.post(f"{root}/agoranet/keys", headers=owner, timeout=30,
                          json={"name": "agent", "budget": 100_000})
        assert made.status_code == 201, made.text
        agent = {"Authorization": f"Bearer {made.json()['key']}"}

        async def together() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as http:
                return list(await asyncio.gather(*(
                    http.post(f"{root}/agoranet/tools/call", headers=agent,
                              json={"name": "wait", "arguments": {"tag": f"call-{i}"}})
                    for i in range(CALLS))))

        replies = asyncio.run(together())
        for i, reply in enumerate(replies):
            assert reply.status_code == 200, reply.text
            assert reply.json()["result"] == {"result": f"call-{i}"}
            assert reply.json()["cost"] == WAIT_PRICE and reply.json()["tried"] == []
        channels = {r.json()["receipt"]["channelId"] for r in replies}
        assert 2 <= len(channels) <= CHANNELS, channels  # at once: more than one channel
        budget = httpx.get(f"{root}/agoranet/keys", headers=owner, timeout=30).json()
        assert [k["spent"] for k in budget["data"] if k["name"] == "agent"] == \
            [CALLS * WAIT_PRICE]

        log = SpendLog(spend_log)
        try:
            rows = [r for r in log.rows() if r.model == "tool:wait"]
        finally:
            log.close()
        assert len(rows) == CALLS and {r.outcome for r in rows} == {"ok"}
        assert len({r.request_id for r in rows}) == CALLS
        spent: dict[str, int] = {}
        for row in rows:
            channel = json.loads(row.receipt)["channelId"]
            spent[channel] = spent.get(channel, 0) + row.amount
        assert set(spent) == channels and sum(spent.values()) == CALLS * WAIT_PRICE
        for channel, amount in spent.items():
            receipted = sum(ledger_receipts(seller.ledger, channel))
            assert receipted == amount  # the seller's receipts == the buyer's spend log
            wait_claimed(dev, channel, amount)
            claimed = claimed_on_chain(dev, channel)[1]
            assert claimed <= receipted and amount >= claimed  # the money invariants
            assert claimed == amount


def _wait_listed(root: str, owner: dict[str, str]) -> None:
    import time

    deadline = time.monotonic() + 60
    while True:
        reply = httpx.get(f"{root}/agoranet/tools", headers=owner, timeout=30)
        if reply.status_code == 200 and any(t["name"] == "wait" for t in reply.json()["data"]):
            return
        assert time.monotonic() < deadline, f"the gateway never listed the tool: {reply.text}"
        time.sleep(0.2)
