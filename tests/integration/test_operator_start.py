"""Issue #15 items 4 and 8: what an operator sees when starting a chain, a node, a gateway.

Real processes on a dev chain: a paid node whose key has no gas (its banner warns,
``registry register`` says so in one line), gateways whose banners name the paying
address, budget, spend log and nodes, and warn of a node that does not answer or
that asks payment of a gateway without a wallet; ``agoranet chain`` on a port
where a chain already runs. All output at 80 columns.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from agoranet.chain.devchain import DevChain
from agoranet.node.launcher import free_port
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore
from cli.clirun import assert_one_line_error, run_subprocess

pytestmark = pytest.mark.slow

PASSWORD = "operator-Password-1"
ENV = {"COLUMNS": "80", "OMP_NUM_THREADS": "1", PASSWORD_ENV_VAR: PASSWORD}


class Process:
    """``agoranet ARGS --port PORT`` with its output in a file, until healthy."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agoranet", *args, "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url.removesuffix("/v1") + "/health", timeout=1).status_code \
                        == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def output(self) -> str:
        """Its output once healthy (the banner is printed before it listens)."""
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _fits(text: str) -> None:
    assert all(len(line) <= 80 for line in text.splitlines()), text


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


@pytest.fixture(scope="module")
def broke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A keystore whose address has no ETH at all."""
    account = Account.create()
    keystore = tmp_path_factory.mktemp("broke") / "key.json"
    create_keystore(keystore, PASSWORD, private_key=bytes(account.key), scrypt_n=2**10)
    return keystore, account.address


@pytest.fixture(scope="module")
def paid_node(chain: DevChain, tiny_model: Path, broke: tuple[Path, str],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    tmp = tmp_path_factory.mktemp("node")
    node = Process(["node", "--model", str(tiny_model), "--price-in", "1000",
                    "--price-out", "3000", "--rpc-url", chain.rpc_url, "--keystore",
                    str(broke[0]), "--ledger", str(tmp / "ledger.sqlite"), "--no-fine-tuning",
                    "--no-adapters"], tmp / "node.log", ENV)
    try:
        node.wait_healthy()
        yield node
    finally:
        node.stop()


def test_node_banner_and_no_gas_warning(paid_node: Process, broke: tuple[Path, str],
                                        chain: DevChain) -> None:
    text = paid_node.output()
    print(text)
    _fits(text)
    flat = _flat(text)
    assert f"agoranet node on {paid_node.url}" in flat
    assert "model tiny (context" in flat
    assert "prices in 1000 / out 3000 base units per 1M tokens" in flat
    assert f"paid to {broke[1]} (x402)" in flat
    assert f"chain eip155:{chain.chain_id} via {chain.rpc_url}" in flat
    assert "gas 0 ETH" in flat
    assert "ledger.sqlite" in flat and "`agoranet node claim`" in flat
    assert f"warning: {broke[1]} has 0 ETH, too little gas to claim" in flat
    # said when the balance was read, before the model loaded (the banner comes after)
    assert text.index("warning:") < text.index("agoranet node on")


def test_register_without_gas_is_one_plain_line(paid_node: Process, broke: tuple[Path, str],
                                                chain: DevChain) -> None:
    result = run_subprocess("registry", "register", "--url", paid_node.url, "--keystore",
                            str(broke[0]), "--rpc-url", chain.rpc_url, env=ENV, timeout=60)
    assert_one_line_error(result, f"{broke[1]} has 0 ETH, too little for the gas of a "
                                  "registration")
    assert "nsufficient funds" not in result.err


def test_gateway_without_wallet_warns_of_paid_and_dead_nodes(paid_node: Process,
                                                              tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gateway = Process(["gateway", "--open", "--node", paid_node.url, "--node", dead,
                       "--spend-log", str(tmp_path / "spend.sqlite")], tmp_path / "gw.log", ENV)
    try:
        gateway.wait_healthy()
        text = gateway.output()
    finally:
        gateway.stop()
    print(text)
    _fits(text)
    flat = _flat(text)
    assert "pays from no wallet (give --rpc-url): free nodes only" in flat
    assert "nodes 1 of 2 answering (1 paid, 0 free)" in flat
    assert f"warning: {dead} does not answer" in flat
    assert f"warning: {paid_node.url} asks payment and this gateway has no wallet" in flat


def test_gateway_banner_names_payer_budget_and_spend_log(paid_node: Process, chain: DevChain,
                                                         tmp_path: Path) -> None:
    payer = Account.from_key(chain.private_keys[3])
    keystore = tmp_path / "payer.json"
    create_keystore(keystore, PASSWORD, private_key=bytes(payer.key), scrypt_n=2**10)
    spend_log = tmp_path / "spend.sqlite"
    gateway = Process(["gateway", "--node", paid_node.url, "--rpc-url", chain.rpc_url,
                       "--keystore", str(keystore), "--budget", "250000",
                       "--spend-log", str(spend_log)], tmp_path / "gw.log", ENV)
    try:
        gateway.wait_healthy()
        text = gateway.output()
    finally:
        gateway.stop()
    print(text)
    _fits(text)
    flat = _flat(text)
    assert f"agoranet gateway on {gateway.url}" in flat
    assert f"pays from {payer.address} via {chain.rpc_url}" in flat
    assert "budget 250000 base units; spent so far 0" in flat
    assert f"spendlog{spend_log}" in flat.replace(" ", "")  # a long path folds
    assert "nodes 1 of 1 answering (1 paid, 0 free)" in flat
    assert "warning" not in text


def test_chain_on_a_port_where_a_chain_runs(chain: DevChain) -> None:
    port = int(chain.rpc_url.rsplit(":", 1)[1])
    result = run_subprocess("chain", "--port", str(port), env=ENV, timeout=60)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")
    assert "RPC URL" not in result.out and "started" not in result.out
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the chain that was there still runs
