"""`agoranet verify` pays a paid node for its challenges within an audit budget (issue #15,
item 3): real chain, real node process, the CLI as a user runs it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import DevChain
from agoranet.payments.pay.payer_store import PayerStore
from agoranet.payments.wallet import create_keystore
from agoranet.testing.invariants import BuyerBook, assert_money_invariants, chain_snapshot
from agoranet.testing.settle import force_settlement
from helpers import node_process

pytestmark = pytest.mark.slow

PASSWORD = "verify-paid-test"
NODE, AUDITOR = 3, 6


def _verify(node: str, reference: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agoranet", "verify", "--node", node,
                           "--reference", str(reference), "--model", "tiny", *extra],
                          capture_output=True, text=True, timeout=240)


def test_verify_pays_a_paid_node_within_its_budget(
        chain: DevChain, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORANET_WALLET_PASSWORD", PASSWORD)
    monkeypatch.setenv("COLUMNS", "200")
    keys = {}
    for index in (NODE, AUDITOR):
        keys[index] = tmp_path / f"key{index}.json"
        create_keystore(keys[index], PASSWORD, scrypt_n=2**10, private_key=bytes.fromhex(
            chain.private_keys[index].removeprefix("0x")))
    ledger = tmp_path / "ledger.sqlite"
    channels = tmp_path / "channels"
    w3, addresses = chain.web3(), resolve_addresses(chain.chain_id)
    before = chain_snapshot(w3, addresses, [chain.accounts[NODE], chain.accounts[AUDITOR]])
    with node_process(["--model", str(tiny_model), "--price-in", "100000", "--price-out",
                       "300000", "--rpc-url", chain.rpc_url, "--keystore", str(keys[NODE]),
                       "--ledger", str(ledger), "--no-fine-tuning", "--no-adapters"]) as node:
        # Without a wallet: a clear error that says what to give, no traceback.
        unpaid = _verify(node, tiny_model)
        assert unpaid.returncode == 1, unpaid.stdout + unpaid.stderr
        assert "--keystore" in unpaid.stderr and "Traceback" not in unpaid.stderr
        wallet = ["--rpc-url", chain.rpc_url, "--keystore", str(keys[AUDITOR]),
                  "--channels", str(channels)]
        paid = _verify(node, tiny_model, *wallet, "--budget", "5000")
        assert paid.returncode == 0, paid.stdout + paid.stderr
        assert "pass" in paid.stdout and "of the 5000 budget" in paid.stdout
        assert "stopped early" not in paid.stdout
        # A budget for a few challenges only: it stops before going over it, and says so.
        small = _verify(node, tiny_model, *wallet, "--budget", "150")
        assert small.returncode == 0, small.stdout + small.stderr
        assert "stopped early" in small.stdout and "of the 150 budget" in small.stdout
        force_settlement(chain.rpc_url, ledger, chain.private_keys[NODE])

    folder = channels / hashlib.sha256(node.encode()).hexdigest()[:16]
    store = PayerStore(folder)
    try:
        state, receipts = store.load(), store.receipts()
    finally:
        store.close()
    assert state is not None
    spent = [int(line.split("paid the node ")[1].split()[0])
             for line in (paid.stdout + small.stdout).splitlines() if "paid the node" in line]
    assert len(spent) == 2 and 0 < spent[0] <= 5000 and 0 < spent[1] <= 150
    assert sum(r.amount for r in receipts) == sum(spent) == int(state["spent"])
    headroom = max(0, int(state["voucher"]) - int(state["charged"]))
    book = BuyerBook.from_payer_store(folder, headroom=headroom)
    report = assert_money_invariants(w3, addresses, before=before, books=[book], ledger=ledger)
    assert report.channels[0].claimed == book.receipted
