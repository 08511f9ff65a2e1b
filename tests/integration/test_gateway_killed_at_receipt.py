"""A paid node killed (SIGKILL) right after it recorded a running receipt and before it sent
it, mid-answer through the gateway: the node, restarted on its ledger, charges and claims
that receipt, which the gateway never got, for tokens that did arrive. The gateway
counted those tokens as spent (at the node's listed price, within the voucher), so
the buyer's recorded spend covers the claim, and the money invariants hold on the dev
chain. Real processes: anvil, two nodes (the victim is the test-only node of
``agoranet.testing`` with the chaos ``kill-at-receipt``), the gateway."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from agoranet.chain.devchain import DevChain
from agoranet.node.launcher import free_port, running_command, wait_healthy
from agoranet.payments.wallet import create_keystore
from helpers import node_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PASSWORD = "gateway-killed-at-receipt"
PRICE_IN, PRICE_OUT = 1_000_000, 3_000_000  # the victim's, per million tokens
EVERY = 4  # the victim's running receipts: after 4 and 8 tokens; it dies at the second


def keystore(chain: DevChain, index: int, path: Path) -> Path:
    key = bytes.fromhex(chain.private_keys[index].removeprefix("0x"))
    create_keystore(path, PASSWORD, private_key=key, scrypt_n=2**10)
    return path


def listed(prompt: int, completion: int) -> int:
    """The victim's listed price of a request, rounded up (its receipts' rule)."""
    return -(-(prompt * PRICE_IN + completion * PRICE_OUT) // 1_000_000)


def test_a_node_killed_between_recording_and_sending_a_receipt_is_covered_by_spend(
    chain: DevChain, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.rpc import connect
    from agoranet.config import ChainSettings
    from agoranet.gateway.spendlog import SpendLog
    from agoranet.payments.receipts import Receipt, verify_receipt
    from agoranet.testing.invariants import BuyerBook, assert_money_invariants, chain_snapshot
    from agoranet.testing.settle import force_settlement

    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    before = chain_snapshot(w3, addresses, [chain.accounts[i] for i in (6, 7, 8)])
    port = free_port()
    victim_url = f"http://127.0.0.1:{port}/v1"
    ledgers = {6: tmp_path / "victim.sqlite", 7: tmp_path / "backup.sqlite"}
    victim_args = [
        "node", "--model", str(tiny_model), "--price-in", str(PRICE_IN),
        "--price-out", str(PRICE_OUT), "--rpc-url", chain.rpc_url,
        "--keystore", str(keystore(chain, 6, tmp_path / "v.json")), "--ledger", str(ledgers[6]),
        "--receipt-every", str(EVERY), "--settle-interval", "0.5", "--claim-max-age", "0",
        "--no-fine-tuning", "--no-adapters"]
    spend_path = tmp_path / "gw" / "spend.sqlite"
    with ExitStack() as stack:
        backup = stack.enter_context(node_process([
            "--model", str(tiny_model), "--price-in", "2000000", "--price-out", "6000000",
            "--rpc-url", chain.rpc_url, "--keystore", str(keystore(chain, 7, tmp_path / "b.json")),
            "--ledger", str(ledgers[7]), "--no-fine-tuning", "--no-adapters"]))
        victim = subprocess.Popen(
            [sys.executable, "-m", "agoranet.testing", *victim_args, "--port", str(port),
             "--chaos-kill-at-receipt", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(victim.wait)
        stack.callback(victim.kill)
        wait_healthy(victim, f"http://127.0.0.1:{port}/health", 60)
        gateway = stack.enter_context(running_command([
            "gateway", "--open", "--rpc-url", chain.rpc_url,
            "--keystore", str(keystore(chain, 8, tmp_path / "gw.json")),
            "--deposit", "5000000", "--budget", "4000000", "--spend-log", str(spend_path),
            "--node", victim_url, "--node", backup]))
        _wait_for_offers(gateway, 2)
        client = OpenAI(base_url=gateway, api_key="x", max_retries=0, timeout=120)
        chunks: list[Any] = list(client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Tell me a story."}],
            stream=True, temperature=0, max_tokens=20, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True, "agoranet": {"prefer": "cheapest"}}))
        assert victim.wait(60) == -signal.SIGKILL  # it died at its second running receipt
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        [summary] = [c.model_extra["agoranet"] for c in chunks if c.usage is not None]
        assert summary["nodes"] == [victim_url, backup] and summary["failovers"] == 1
        assert text  # one answer, the next node's continuing the victim's

        rows = SpendLog(spend_path).rows(summary["request_id"])
        assert [(r.node, r.outcome) for r in rows] == [
            (victim_url, "partial"), (victim_url, "unreceipted"), (backup, "ok")]
        cut, beyond, rest = rows
        assert cut.receipt is not None and beyond.receipt is None
        held = Receipt.from_json(json.loads(cut.receipt))
        verify_receipt(held, chain.accounts[6])
        # The gateway holds the first running receipt (4 tokens); 8 arrived before the
        # victim died with its receipt for 8 recorded and unsent: 4 more, counted as spent.
        assert (held.tokens_out, cut.completion_tokens, cut.amount) == (4, 8, held.amount)
        assert beyond.amount == listed(held.tokens_in, 8) - held.amount > 0
        assert summary["amount"] == sum(r.amount for r in rows)
        print(f"\nkilled at its receipt for 8 tokens: held the receipt for {held.tokens_out} "
              f"({held.amount}), counted {beyond.amount} for the 4 tokens after it; "
              f"the next node: {rest.completion_tokens} tokens for {rest.amount}")

        # The victim restarts on its ledger: it releases the answer it was killed in,
        # charging the receipt it recorded and never sent, and claims it.
        stack.enter_context(running_command(victim_args, port=port, timeout=120))
        for index, ledger in ledgers.items():
            force_settlement(chain.rpc_url, ledger, chain.private_keys[index])
        books = [BuyerBook.from_payer_store(p.parent, headroom=1_000)
                 for p in (tmp_path / "gw").rglob("payer.sqlite")]
        for index, ledger in ledgers.items():
            [book] = [b for b in books if b.receipts and all(
                r.signer.lower() == chain.accounts[index].lower() for r in b.receipts)]
            report = assert_money_invariants(w3, addresses, before=before, books=[book],
                                             ledger=ledger)
            [facts] = report.channels
            assert facts.claimed <= _receipted_by_node(ledger, book.channel_id)
            assert facts.spent >= facts.claimed
            if index == 6:  # the receipt for 8 tokens the buyer never got, claimed
                assert facts.claimed == listed(held.tokens_in, 8) == facts.spent
            print(report.text)


def _receipted_by_node(ledger: Path, channel_id: str) -> int:
    """What the receipts the node signed and charged on the channel add up to."""
    with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)) as db:
        row = db.execute("SELECT COALESCE(SUM(amount), 0) FROM receipts WHERE channel_id = ?",
                         (channel_id,)).fetchone()
    return int(row[0])


def _wait_for_offers(gateway: str, count: int) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=30).json()
        if sum(bool(r["models"]) for r in rows["nodes"]) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError("the gateway never saw every node's offer")
