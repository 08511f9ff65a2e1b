"""The gateway paying real paid nodes on the dev chain, with the openai client."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from openai import OpenAI

from agoranet.chain.devchain import DevChain
from agoranet.node.launcher import running_command
from agoranet.payments.wallet import create_keystore
from helpers import node_process

pytestmark = pytest.mark.slow

PASSWORD = "gateway-paid-test"
QUESTION = [{"role": "user", "content": "Tell me about the river."}]



def keystore(chain: DevChain, index: int, path: Path) -> Path:
    key = bytes.fromhex(chain.private_keys[index].removeprefix("0x"))
    create_keystore(path, PASSWORD, private_key=key, scrypt_n=2**10)
    return path


def stablecoin_balance(chain: DevChain, address: str) -> int:
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.payments.wallet import balances

    w3 = chain.web3()
    return balances(w3, resolve_addresses(chain.chain_id), address).stablecoin


def test_gateway_pays_nodes_and_nodes_settle_what_the_receipts_say(
    chain: DevChain, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    nodes = {}
    with ExitStack() as stack:
        for index, (p_in, p_out) in ((3, (100_000, 300_000)), (4, (200_000, 600_000))):
            ks = keystore(chain, index, tmp_path / f"node{index}.json")
            nodes[chain.accounts[index]] = stack.enter_context(node_process([
                "--model", str(tiny_model), "--price-in", str(p_in), "--price-out", str(p_out),
                "--rpc-url", chain.rpc_url, "--keystore", str(ks),
                "--ledger", str(tmp_path / f"ledger{index}.sqlite"), "--settle-interval", "0.5",
                "--claim-max-age", "1", "--no-fine-tuning", "--no-adapters"]))
        before = {a: stablecoin_balance(chain, a) for a in nodes}
        wallet = keystore(chain, 5, tmp_path / "gateway.json")
        args = ["gateway", "--rpc-url", chain.rpc_url, "--keystore", str(wallet),
                "--deposit", "500000", "--budget", "200000",
                "--spend-log", str(tmp_path / "gw" / "spend.sqlite")]
        for url in nodes.values():
            args += ["--node", url]
        gateway = stack.enter_context(running_command(args))
        client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
        amounts: list[int] = []
        for i in range(6):
            prefer = {"prefer": "cheapest"} if i < 4 else {"deny": [nodes[chain.accounts[3]]]}
            if i % 2:
                reply = client.chat.completions.create(
                    model="tiny", messages=QUESTION, max_tokens=24, extra_body={"agoranet": prefer})
                amounts.append(reply.model_extra["agoranet"]["amount"])  # type: ignore[index]
                assert reply.choices[0].message.content
            else:
                summary = None
                for chunk in client.chat.completions.create(
                        model="tiny", messages=QUESTION, max_tokens=24, stream=True,
                        stream_options={"include_usage": True}, extra_body={"agoranet": prefer}):
                    summary = (chunk.model_extra or {}).get("agoranet") or summary
                assert summary is not None
                amounts.append(summary["amount"])
        assert all(a > 0 for a in amounts)
        receipts = _receipts(tmp_path / "gw" / "channels")
        assert sum(int(str(r["amount"])) for r in receipts) == sum(amounts)
        # The nodes claim and settle on their own; their balances rise by their receipts.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            gained = {a: stablecoin_balance(chain, a) - before[a] for a in nodes}
            if sum(gained.values()) == sum(amounts):
                break
            time.sleep(0.5)
    by_node: dict[str, int] = {}
    for receipt in receipts:
        node = str(receipt["signer"]).lower()
        by_node[node] = by_node.get(node, 0) + int(str(receipt["amount"]))
    assert {a.lower(): g for a, g in gained.items()} == by_node


def _receipts(root: Path) -> list[dict[str, object]]:
    found = []
    for path in root.rglob("receipts.jsonl"):
        found += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return found
