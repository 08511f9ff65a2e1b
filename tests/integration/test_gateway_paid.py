"""The gateway paying real paid nodes on the dev chain, with the openai client."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from openai import OpenAI

from agoranet.chain.devchain import DevChain
from agoranet.node.launcher import running_command, wait_healthy
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
        args = ["gateway", "--open", "--rpc-url", chain.rpc_url, "--keystore", str(wallet),
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
        # The Responses API is paid like a chat request: plain and streamed.
        plain = client.responses.create(model="tiny", input="Hello!", max_output_tokens=24)
        assert plain.output_text
        amounts.append(plain.model_extra["agoranet"]["amount"])  # type: ignore[index]
        events = list(client.responses.create(model="tiny", input="Hello!",
                                              max_output_tokens=24, stream=True))
        final = events[-1].response  # type: ignore[union-attr]
        amounts.append(final.model_extra["agoranet"]["amount"])  # type: ignore[index]
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
    from agoranet.payments.pay.payer_store import PayerStore

    found: list[dict[str, object]] = []
    for path in root.rglob("payer.sqlite"):
        store = PayerStore(path.parent)
        found += [r.to_json() for r in store.receipts()]
        store.close()
    return found


def test_a_paid_node_killed_mid_stream_is_paid_what_it_receipted(
    chain: DevChain, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL mid-answer: the answer completes on the next node, the spend log holds both
    nodes' charges, each backed by a signed receipt, and the killed node, restarted,
    claims on chain exactly what its last running receipt said."""
    import itertools
    import os
    import signal
    import subprocess
    import sys

    from agoranet.gateway.spendlog import SpendLog
    from agoranet.market import TokenPrices, cost
    from agoranet.node.launcher import free_port
    from agoranet.payments.receipts import Receipt, verify_receipt

    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    port = free_port()
    victim_url = f"http://127.0.0.1:{port}/v1"
    victim_ledger = tmp_path / "victim.sqlite"
    victim_args = [
        "node", "--model", str(tiny_model),
        "--price-in", "100000", "--price-out", "300000", "--rpc-url", chain.rpc_url,
        "--keystore", str(keystore(chain, 6, tmp_path / "victim.json")),
        "--ledger", str(victim_ledger), "--receipt-every", "4", "--settle-interval", "0.5",
        "--claim-max-age", "0", "--no-fine-tuning", "--no-adapters"]
    spend_path = tmp_path / "gw" / "spend.sqlite"
    with ExitStack() as stack:
        backup = stack.enter_context(node_process([
            "--model", str(tiny_model), "--price-in", "200000", "--price-out", "600000",
            "--rpc-url", chain.rpc_url, "--keystore", str(keystore(chain, 7, tmp_path / "b.json")),
            "--ledger", str(tmp_path / "backup.sqlite"), "--no-fine-tuning", "--no-adapters"]))
        # Slow (40 ms a token: the test-only node's chaos) and cheapest, so the kill lands
        # mid-answer on it.
        victim = subprocess.Popen([sys.executable, "-m", "agoranet.testing", *victim_args,
                                   "--port", str(port), "--chaos-delay-ms", "40"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(victim.wait)
        stack.callback(victim.kill)
        wait_healthy(victim, f"http://127.0.0.1:{port}/health", 60)
        gateway = stack.enter_context(running_command([
            "gateway", "--open", "--rpc-url", chain.rpc_url,
            "--keystore", str(keystore(chain, 8, tmp_path / "gw.json")),
            "--deposit", "500000", "--budget", "400000", "--spend-log", str(spend_path),
            "--node", victim_url, "--node", backup]))
        client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
        healthy = client.chat.completions.create(
            model="tiny", messages=QUESTION, temperature=0, max_tokens=48,
            extra_body={"agoranet": {"deny": [victim_url]}}).choices[0].message.content
        pieces: list[str] = []
        stamps: list[float] = []
        summary = None
        for chunk in client.chat.completions.create(
                model="tiny", messages=QUESTION, temperature=0, max_tokens=48, stream=True,
                stream_options={"include_usage": True},
                extra_body={"agoranet": {"prefer": "cheapest"}}):
            stamps.append(time.perf_counter())
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == 14:
                    os.kill(victim.pid, signal.SIGKILL)
            if chunk.usage is not None:
                summary = (chunk.model_extra or {}).get("agoranet")
        pause_ms = max(b - a for a, b in itertools.pairwise(stamps)) * 1000
        print(f"\nlongest pause the client saw at the paid failover: {pause_ms:.0f} ms")
        assert "".join(pieces) == healthy
        assert summary is not None and summary["nodes"] == [victim_url, backup]
        rows = SpendLog(spend_path).rows(summary["request_id"])
        # the tokens that arrived after the victim's last running receipt: a row of their own
        beyond = [(r.node, r.amount, r.receipt) for r in rows if r.outcome == "unreceipted"]
        rows = [r for r in rows if r.outcome != "unreceipted"]
        assert [(r.node, r.outcome) for r in rows] == [(victim_url, "partial"), (backup, "ok")]
        receipts = []
        for row, index, prices in ((rows[0], 6, TokenPrices(100_000, 300_000)),
                                   (rows[1], 7, TokenPrices(200_000, 600_000))):
            assert row.receipt is not None
            receipt = Receipt.from_json(json.loads(row.receipt))
            verify_receipt(receipt, chain.accounts[index])
            assert row.amount == receipt.amount == cost(prices, receipt.tokens_in,
                                                        receipt.tokens_out) > 0
            receipts.append(receipt)
        cut = receipts[0]
        print(f"killed node: streamed {rows[0].completion_tokens} tokens, receipted "
              f"{cut.tokens_out} for {cut.amount}; next node: {receipts[1].tokens_out} tokens "
              f"for {receipts[1].amount}")
        assert cut.tokens_out % 4 == 0 and 4 <= cut.tokens_out <= rows[0].completion_tokens
        # ... counted as spent at the victim's listed price, without a receipt
        extra = cost(TokenPrices(100_000, 300_000), cut.tokens_in,
                     rows[0].completion_tokens) - cut.amount
        assert beyond == ([(victim_url, extra, None)] if extra else [])
        assert summary["amount"] == sum(r.amount for r in receipts) + extra
        # The killed node restarts on its ledger and claims exactly what it had receipted.
        victim.wait()
        again = stack.enter_context(running_command(victim_args, port=port, timeout=120))
        assert again == victim_url
        deadline = time.monotonic() + 30
        claimed = 0
        while time.monotonic() < deadline and claimed != cut.cumulative:
            claimed = _claimed(chain, cut.channel_id)
            time.sleep(0.5)
        assert claimed == cut.cumulative


def _claimed(chain: DevChain, channel_id: str) -> int:
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.payments.channels import escrow_contract

    escrow = escrow_contract(chain.web3(), resolve_addresses(chain.chain_id))
    return int(escrow.functions.channels(bytes.fromhex(channel_id[2:])).call()[1])
