"""Nodes announce themselves on chain; the gateway discovers and checks them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agoranet.chain.devchain import DevChain
from agoranet.node.launcher import running_command
from agoranet.payments.wallet import create_keystore
from helpers import node_process

pytestmark = pytest.mark.slow

PASSWORD = "registry-test-password"



def agoranet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agoranet", *args], capture_output=True,
                          text=True, timeout=120)


def test_gateway_discovers_registered_nodes_and_refuses_mismatches(
    chain: DevChain, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eth_account import Account

    from agoranet.registry.onchain import registry_at

    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    node_key, liar_key = tmp_path / "node.json", tmp_path / "liar.json"
    create_keystore(node_key, PASSWORD, private_key=bytes.fromhex(
        chain.private_keys[3].removeprefix("0x")), scrypt_n=2**10)
    create_keystore(liar_key, PASSWORD, private_key=bytes.fromhex(
        chain.private_keys[4].removeprefix("0x")), scrypt_n=2**10)
    with node_process(["--model", str(tiny_model), "--price-in", "100", "--price-out", "300",
                       "--rpc-url", chain.rpc_url, "--keystore", str(node_key),
                       "--ledger", str(tmp_path / "ledger.sqlite"),
                       "--no-fine-tuning", "--no-adapters"]) as url:
        ok = agoranet("registry", "register", "--url", url, "--keystore", str(node_key),
                      "--rpc-url", chain.rpc_url)
        assert ok.returncode == 0, ok.stderr
        # Someone else cannot register this node: its offer is signed by the node's key.
        refused = agoranet("registry", "register", "--url", url, "--keystore", str(liar_key),
                           "--rpc-url", chain.rpc_url)
        assert refused.returncode == 1 and "registered by" in refused.stderr.replace("\n", " ")
        # A liar registering a bogus hash for another spelling of the URL is refused by the gateway.
        liar = Account.from_key(chain.private_keys[4])
        alias = url.replace("127.0.0.1", "localhost")
        registry_at(chain.rpc_url).register(liar, alias, "0x" + "ab" * 32)
        assert {e.url for e in registry_at(chain.rpc_url).entries()} == {url, alias}

        args = ["gateway", "--open", "--registry-rpc-url", chain.rpc_url,
                "--spend-log", str(tmp_path / "spend.sqlite")]
        with running_command(args) as gateway:
            rows = _wait_for_rows(gateway, 2)
    by_url = {r["url"]: r for r in rows}
    assert by_url[url]["models"] == ["tiny"] and by_url[url]["offer_error"] is None
    assert by_url[alias]["models"] == [] and "refused" in by_url[alias]["offer_error"]


def _wait_for_rows(gateway: str, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 30
    root = gateway.removesuffix("/v1")
    while True:
        rows = httpx.get(f"{root}/agoranet/nodes").json()["nodes"]
        settled = [r for r in rows if r["models"] or r["offer_error"]]
        if len(settled) >= count or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.3)
