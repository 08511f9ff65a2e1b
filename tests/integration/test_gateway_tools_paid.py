"""A paid node killed (SIGKILL) in the middle of a forced tool call through the gateway:
the client gets exactly one whole, valid call (from the next node), the killed node is
paid what it receipted and no more, and the money invariants hold on the dev chain."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openai import OpenAI

from agoranet.chain.devchain import DevChain
from agoranet.node.launcher import free_port, running_command, wait_healthy
from agoranet.payments.wallet import create_keystore
from helpers import node_process

pytestmark = pytest.mark.slow

PASSWORD = "gateway-tools-paid"
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "minLength": 20, "maxLength": 40},
    "days": {"type": "integer", "minimum": 1, "maximum": 7},
    "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "days", "unit"], "additionalProperties": False}
TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
FRAME_DELAY_MS = 150  # the victim's pace: its call takes seconds, so the kill lands inside


def keystore(chain: DevChain, index: int, path: Path) -> Path:
    key = bytes.fromhex(chain.private_keys[index].removeprefix("0x"))
    create_keystore(path, PASSWORD, private_key=key, scrypt_n=2**10)
    return path


def test_a_paid_node_killed_mid_call_is_paid_its_receipts_and_the_call_comes_whole(
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
        "node", "--model", str(tiny_model), "--price-in", "100000", "--price-out", "300000",
        "--rpc-url", chain.rpc_url, "--keystore", str(keystore(chain, 6, tmp_path / "v.json")),
        "--ledger", str(ledgers[6]), "--receipt-every", "4", "--settle-interval", "0.5",
        "--claim-max-age", "0", "--no-fine-tuning", "--no-adapters"]
    spend_path = tmp_path / "gw" / "spend.sqlite"
    with ExitStack() as stack:
        backup = stack.enter_context(node_process([
            "--model", str(tiny_model), "--price-in", "200000", "--price-out", "600000",
            "--rpc-url", chain.rpc_url, "--keystore", str(keystore(chain, 7, tmp_path / "b.json")),
            "--ledger", str(ledgers[7]), "--no-fine-tuning", "--no-adapters"]))
        victim = subprocess.Popen([sys.executable, "-m", "agoranet.testing", *victim_args, "--port",
                                   str(port), "--chaos-delay-ms", str(FRAME_DELAY_MS)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(victim.wait)
        stack.callback(victim.kill)
        wait_healthy(victim, f"http://127.0.0.1:{port}/health", 60)
        gateway = stack.enter_context(running_command([
            "gateway", "--open", "--rpc-url", chain.rpc_url,
            "--keystore", str(keystore(chain, 8, tmp_path / "gw.json")),
            "--deposit", "500000", "--budget", "400000", "--spend-log", str(spend_path),
            "--node", victim_url, "--node", backup]))
        _wait_for_offers(gateway, 2)
        client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
        chunks: list[Any] = []
        failed: list[BaseException] = []

        def ask() -> None:
            try:
                chunks.extend(client.chat.completions.create(
                    model="tiny", messages=QUESTION, tools=TOOLS, stream=True,
                    tool_choice={"type": "function", "function": {"name": "get_weather"}},
                    temperature=1, seed=11, max_tokens=200, parallel_tool_calls=False,
                    stream_options={"include_usage": True},
                    extra_body={"agoranet": {"prefer": "cheapest"}}))
            except BaseException as exc:  # raised in the test below
                failed.append(exc)

        asker = threading.Thread(target=ask)
        asker.start()
        # The victim persists its first running receipt (4 tokens in), sends it one frame
        # later, and the next one four frames after that: the kill lands between the two,
        # once the buyer holds the first (a node killed between persisting a running
        # receipt and sending it would claim one the buyer never got: that window is
        # test_gateway_killed_at_receipt.py's).
        deadline = time.monotonic() + 60
        while not _receipted(ledgers[6]) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(2.5 * FRAME_DELAY_MS / 1000)
        os.kill(victim.pid, signal.SIGKILL)
        asker.join(120)
        assert not failed, failed
        calls: dict[int, dict[str, Any]] = {}
        for chunk in chunks:
            for choice in chunk.choices:
                assert not choice.delta.content
                for delta in choice.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"ids": [], "arguments": ""})
                    call["ids"] += [delta.id] if delta.id else []
                    call["arguments"] += delta.function.arguments or "" if delta.function else ""
        [call] = calls.values()  # exactly one call, from one node: one id
        assert len(call["ids"]) == 1
        jsonschema.validate(json.loads(call["arguments"]), WEATHER)
        [summary] = [c.model_extra["agoranet"] for c in chunks if c.usage is not None]
        assert summary["nodes"] == [victim_url, backup] and summary["failovers"] == 1
        rows = SpendLog(spend_path).rows(summary["request_id"])
        # the tokens that arrived after the victim's last running receipt: a row of their own
        beyond = [(r.node, r.amount, r.receipt) for r in rows if r.outcome == "unreceipted"]
        rows = [r for r in rows if r.outcome != "unreceipted"]
        assert [(r.node, r.outcome) for r in rows] == [(victim_url, "partial"), (backup, "ok")]
        receipts = []
        for row, index in zip(rows, (6, 7), strict=True):
            assert row.receipt is not None
            receipt = Receipt.from_json(json.loads(row.receipt))
            verify_receipt(receipt, chain.accounts[index])
            assert row.amount == receipt.amount > 0
            receipts.append(receipt)
        cut = receipts[0]  # the killed node: only what it receipted, its running receipt
        assert cut.tokens_out % 4 == 0 and 4 <= cut.tokens_out <= rows[0].completion_tokens
        # ... and, counted as spent, the tokens after it at its listed price (100,000 and
        # 300,000 per million, rounded up like a receipt)
        extra = -(-(cut.tokens_in * 100_000 + rows[0].completion_tokens * 300_000)
                  // 1_000_000) - cut.amount
        assert beyond == ([(victim_url, extra, None)] if extra else [])
        assert summary["amount"] == sum(r.amount for r in receipts) + extra
        print(f"\nkilled mid-call: streamed {rows[0].completion_tokens} tokens, receipted "
              f"{cut.tokens_out} for {cut.amount}; the restart on the next node: "
              f"{receipts[1].tokens_out} tokens for {receipts[1].amount}")
        # The killed node restarts on its ledger (releasing the answer it was killed in).
        victim.wait()
        stack.enter_context(running_command(victim_args, port=port, timeout=120))
        for index, ledger in ledgers.items():
            force_settlement(chain.rpc_url, ledger, chain.private_keys[index])
        books = [BuyerBook.from_payer_store(p.parent, headroom=1_000)
                 for p in (tmp_path / "gw").rglob("payer.sqlite")]
        for index, ledger in ledgers.items():
            [book] = [b for b in books if b.receipts and all(
                r.signer.lower() == chain.accounts[index].lower() for r in b.receipts)]
            assert_money_invariants(w3, addresses, before=before, books=[book], ledger=ledger)


def _receipted(ledger: Path) -> bool:
    """Whether the node's ledger holds a running receipt (read-only, beside the node)."""
    if not ledger.exists():
        return False
    with closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return db.execute("SELECT 1 FROM running_receipts").fetchone() is not None
        except sqlite3.OperationalError:  # not created yet
            return False


def _wait_for_offers(gateway: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=30).json()
        if sum(bool(r["models"]) for r in rows["nodes"]) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError("the gateway never saw every node's offer")
