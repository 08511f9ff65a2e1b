"""A dev chain restarted without its state (issue #15, item 2).

The gateway's saved channel no longer exists on chain. The payer notices (when a node
says the channel holds no deposit, and when the gateway loads the channel after a
restart), retires it with its receipts kept, opens a new one and says so; the node is
not banned, the client gets its answers, and no record of what was paid is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import DevChain, find_anvil, start_devchain
from agoranet.errors import DevChainError
from agoranet.gateway.spendlog import SpendLog
from agoranet.node.launcher import free_port, running_command
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.wallet import create_keystore
from agoranet.testing.invariants import BuyerBook, assert_money_invariants, chain_snapshot
from agoranet.testing.settle import force_settlement
from helpers import node_process

pytestmark = pytest.mark.slow

PASSWORD = "chain-reset-test"
QUESTION = [{"role": "user", "content": "Tell me about the river."}]
NODE, BUYER = 3, 5


@contextmanager
def _chain(port: int) -> Iterator[DevChain]:
    dev = start_devchain(port=port)  # no state file: a fresh chain every time
    try:
        yield dev
    finally:
        dev.stop()


def _ask(gateway: str) -> int:
    client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=8)
    assert reply.choices[0].message.content
    amount = int(reply.model_extra["agoranet"]["amount"])  # type: ignore[index]
    assert amount > 0
    return amount


def _row(gateway: str) -> dict[str, Any]:
    root = gateway.removesuffix("/v1")
    rows = httpx.get(f"{root}/agoranet/nodes", timeout=10).json()["nodes"]
    return dict(rows[0])


def _wait_offer(gateway: str) -> None:
    deadline = time.monotonic() + 30
    while not _row(gateway)["models"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_chain_restarted_without_state_gets_a_new_channel_and_keeps_the_books(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        find_anvil()
    except DevChainError as exc:
        pytest.skip(str(exc))
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    port = free_port()
    gw_dir = tmp_path / "gw"
    amounts: list[int] = []
    with ExitStack() as stack:
        dev = stack.enter_context(_chain(port))
        keys = {}
        for index in (NODE, BUYER):
            keys[index] = tmp_path / f"key{index}.json"
            create_keystore(keys[index], PASSWORD, scrypt_n=2**10, private_key=bytes.fromhex(
                dev.private_keys[index].removeprefix("0x")))
        ledger = tmp_path / "ledger.sqlite"
        node = stack.enter_context(node_process([
            "--model", str(tiny_model), "--price-in", "100000", "--price-out", "300000",
            "--rpc-url", dev.rpc_url, "--keystore", str(keys[NODE]), "--ledger", str(ledger),
            "--chain-state-ttl", "0", "--no-fine-tuning", "--no-adapters"]))
        gateway_args = ["gateway", "--open", "--node", node, "--rpc-url", dev.rpc_url,
                        "--keystore", str(keys[BUYER]), "--deposit", "500000",
                        "--budget", "1000000", "--spend-log", str(gw_dir / "spend.sqlite")]
        with running_command(gateway_args) as gateway:
            _wait_offer(gateway)
            amounts.append(_ask(gateway))
            # The chain restarts without its state while the gateway runs.
            dev.stop()
            dev = start_devchain(port=port)
            stack.callback(dev.stop)
            amounts.append(_ask(gateway))
            row = _row(gateway)
            assert row["failures"] == 0 and not row["banned"], row
            assert any("retired" in e for e in row["events"]), row["events"]
        # Again, with the gateway stopped: it finds the saved channel gone when it starts.
        dev.stop()
        dev = start_devchain(port=port)
        stack.callback(dev.stop)
        addresses = resolve_addresses(dev.chain_id)
        w3 = dev.web3()
        before = chain_snapshot(w3, addresses, [dev.accounts[NODE], dev.accounts[BUYER]])
        with running_command(gateway_args) as gateway:
            _wait_offer(gateway)
            amounts.append(_ask(gateway))
            amounts.append(_ask(gateway))
            row = _row(gateway)
            assert row["failures"] == 0 and not row["banned"], row
        force_settlement(dev.rpc_url, ledger, dev.private_keys[NODE])

        folder = next((gw_dir / "channels").iterdir())
        store = PayerStore(folder)
        try:
            retired, receipts, state = store.retired(), store.receipts(), store.load()
        finally:
            store.close()
        assert state is not None
        # Two channels retired, every receipt kept; the spend log (the budget's source)
        # holds every answer's charge.
        assert len(retired) == 2 and all("no deposit" in why for _, why in retired)
        assert [s.receipts for s, _ in retired] == [1, 1]
        assert sum(r.amount for r in receipts) == sum(amounts)
        assert len({r.channel_id for r in receipts}) == 3
        spend = SpendLog(gw_dir / "spend.sqlite")
        try:
            assert spend.total() == sum(amounts)
        finally:
            spend.close()
        # The money invariants on the channel in use now.
        headroom = int(state["voucher"]) - int(state["charged"])
        book = BuyerBook.from_payer_store(folder, headroom=max(headroom, 0))
        assert book.receipted == sum(amounts[2:])
        report = assert_money_invariants(w3, addresses, before=before, books=[book],
                                         ledger=ledger)
        assert report.channels[0].claimed == book.receipted
