"""Issue #15 item 8: ``agoranet node claim`` claims a node's earnings now.

Real processes: a dev chain, a paid node whose thresholds would not claim for
hours, a payer with a channel. While the node runs its ledger is locked (the
node claims by itself); once it is stopped, ``node claim`` claims every receipt
and settles it to the node's address, and the sums agree with the chain.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import DevChain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.node.launcher import free_port
from agoranet.payments.channels import read_channel
from agoranet.payments.pay.httpx_auth import PayerAuth
from agoranet.payments.pay.payer import Payer
from agoranet.payments.wallet import (
    PASSWORD_ENV_VAR,
    create_keystore,
    fund_dev,
    stablecoin_contract,
)
from cli.clirun import assert_one_line_error, run_subprocess

pytestmark = pytest.mark.slow

PASSWORD = "claim-Password-1"
ENV = {"COLUMNS": "80", "OMP_NUM_THREADS": "1", PASSWORD_ENV_VAR: PASSWORD}
NEVER = ["--claim-min-amount", str(10**15), "--claim-max-requests", "1000000",
         "--claim-max-age", "1000000"]


def _receipted(ledger: Path) -> int:
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COALESCE(SUM(amount), 0) FROM receipts").fetchone()[0])
    finally:
        db.close()


def test_node_claim_claims_and_settles_now(chain: DevChain, tiny_model: Path,
                                           tmp_path: Path) -> None:
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    coin = stablecoin_contract(w3, addresses)
    node_account: LocalAccount = Account.from_key(chain.private_keys[6])
    keystore, ledger = tmp_path / "node.json", tmp_path / "ledger.sqlite"
    create_keystore(keystore, PASSWORD, private_key=bytes(node_account.key), scrypt_n=2**10)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        node = subprocess.Popen(
            [sys.executable, "-m", "agoranet", "node", "--model", str(tiny_model),
             "--price-in", "1000000", "--price-out", "3000000", "--rpc-url", chain.rpc_url,
             "--keystore", str(keystore), "--ledger", str(ledger), "--no-fine-tuning",
             "--no-adapters", "--settle-interval", "0.2", *NEVER, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    payer_account = Account.create()
    fund_dev(w3, addresses, payer_account.address, stablecoin=10_000_000, native=10**18)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert node.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        payer = Payer(f"{url}/v1", w3, addresses, account=payer_account,
                      state_dir=tmp_path / "payer", max_per_request=2_000)
        payer.open(1_000_000)
        with httpx.Client(base_url=url, auth=PayerAuth(payer), timeout=60.0) as http:
            for i in range(3):
                body = {"model": "tiny", "max_tokens": 4, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Day {i}?"}]}
                assert http.post("/v1/chat/completions", json=body).status_code == 200
        # The running node holds its ledger: a second process may not claim from it.
        busy = run_subprocess("node", "claim", "--ledger", str(ledger), "--keystore",
                              str(keystore), "--rpc-url", chain.rpc_url, env=ENV, timeout=60)
        assert_one_line_error(busy, f"the ledger {ledger} is in use by process {node.pid}")
    finally:
        node.terminate()
        node.wait(timeout=30)
    receipted = _receipted(ledger)
    paid_by_payer = sum(r.amount for r in payer.receipts())
    assert receipted > 0 and receipted == paid_by_payer
    assert read_channel(w3, addresses, payer.config).total_claimed == 0  # thresholds not met
    before = int(coin.functions.balanceOf(node_account.address).call())

    result = run_subprocess("node", "claim", "--ledger", str(ledger), "--keystore",
                            str(keystore), "--rpc-url", chain.rpc_url, env=ENV, timeout=120)
    print(result.out, result.err)
    assert result.code == 0, result
    assert all(len(line) <= 80 for line in result.out.splitlines())
    claimed = read_channel(w3, addresses, payer.config).total_claimed
    assert claimed == receipted  # claimed <= receipted, and nothing left unclaimed
    assert int(coin.functions.balanceOf(node_account.address).call()) == before + claimed
    assert f"settled {claimed / 10**6:.6f} to {node_account.address}" in result.out
    again = run_subprocess("node", "claim", "--ledger", str(ledger), "--keystore",
                           str(keystore), "--rpc-url", chain.rpc_url, env=ENV, timeout=120)
    assert again.code == 0 and "nothing to claim" in again.out, again
    assert read_channel(w3, addresses, payer.config).total_claimed == claimed
