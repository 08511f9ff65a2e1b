"""Real processes: a dev chain, a paid ``agoranet node`` serving the tiny model, a payer.

The payer is :class:`agoranet.payments.pay.payer.Payer` behind its httpx auth. The
node claims through its own settlement loop (a request-count threshold, and a
pending withdrawal), the payer's withdrawal returns the rest, and every sum is
checked against the chain: claimed == the node's receipts == the payer's
receipts, and the stablecoin's supply never moves. A SIGKILL in the middle of
a paid stream loses no accepted voucher.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from agoranet.chain.addresses import ChainAddresses, resolve_addresses
from agoranet.chain.devchain import DevChain, find_anvil, start_devchain
from agoranet.chain.rpc import connect
from agoranet.cli.node import node as node_cli
from agoranet.config import ChainSettings
from agoranet.errors import DevChainError
from agoranet.payments.channels import read_channel
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer
from agoranet.payments.wallet import (
    PASSWORD_ENV_VAR,
    create_keystore,
    fund_dev,
    stablecoin_contract,
)
from integration.node_process import NodeProcess

try:
    find_anvil()
    NO_ANVIL = ""
except DevChainError as exc:
    NO_ANVIL = str(exc)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(NO_ANVIL), reason=NO_ANVIL or "-")]

PASSWORD = "e2e-Password-71c"
PRICE_IN, PRICE_OUT = 1_000_000, 3_000_000  # 1 and 3 base units per token
MAX_PER_REQUEST = 2_000  # the payer's per-request maximum (above any worst case here)
DEPOSIT = 2_000_000


@dataclass
class Chain:
    dev: DevChain
    w3: Web3
    addresses: ChainAddresses

    def balance(self, who: str) -> int:
        return int(stablecoin_contract(self.w3, self.addresses).functions.balanceOf(who).call())

    def supply(self) -> int:
        return int(stablecoin_contract(self.w3, self.addresses).functions.totalSupply().call())


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    with start_devchain() as dev:
        w3 = connect(dev.rpc_url)
        yield Chain(dev, w3, resolve_addresses(dev.chain_id, ChainSettings(rpc_url=dev.rpc_url)))


def start_node(chain: Chain, tiny_model: Path, tmp: Path, key_index: int,
               *extra: str) -> tuple[NodeProcess, Path, LocalAccount]:
    account: LocalAccount = Account.from_key(chain.dev.private_keys[key_index])
    keystore = tmp / "node-key.json"
    create_keystore(keystore, PASSWORD, private_key=bytes(account.key), scrypt_n=2**10)
    ledger = tmp / "ledger.sqlite"
    node = NodeProcess([
        "--model", str(tiny_model), "--price-in", str(PRICE_IN), "--price-out", str(PRICE_OUT),
        "--rpc-url", chain.dev.rpc_url, "--keystore", str(keystore), "--ledger", str(ledger),
        "--no-fine-tuning", "--no-adapters", "--settle-interval", "0.2",
        "--chain-state-ttl", "1", *extra], tmp / "node.log",
        env={PASSWORD_ENV_VAR: PASSWORD})
    node.start()
    return node, ledger, account


def new_payer(chain: Chain, url: str, tmp: Path) -> Payer:
    account: LocalAccount = Account.create()
    fund_dev(chain.w3, chain.addresses, account.address, stablecoin=10_000_000, native=10**18)
    payer = Payer(url, chain.w3, chain.addresses, account=account, state_dir=tmp / "payer",
                  max_per_request=MAX_PER_REQUEST)
    payer.open(DEPOSIT)
    return payer


def ask(http: httpx.Client, i: int, *, stream: bool) -> int:
    """One paid request; the charged amount from the checked receipt."""
    body = {"model": "tiny", "max_tokens": 3 + i % 4, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": f"Tell me about day {i}."}]}
    assert isinstance(http.auth, PayerAuth)
    paid = http.auth.paying(payment := Payment())
    if not stream:
        response = http.post("/v1/chat/completions", json=body, auth=paid)
        assert response.status_code == 200, response.text
    else:
        with http.stream("POST", "/v1/chat/completions", json=body, auth=paid) as response:
            assert response.status_code == 200, response.read()
            lines = [line for line in response.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
    receipt = payment.receipt
    assert receipt is not None
    return int(receipt.amount)


def ledger_rows(ledger: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def wait_claimed(chain: Chain, payer: Payer, total: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while read_channel(chain.w3, chain.addresses, payer.config).total_claimed != total:
        assert time.monotonic() < deadline, (
            read_channel(chain.w3, chain.addresses, payer.config), total)
        time.sleep(0.2)


def withdraw_and_check(chain: Chain, payer: Payer, node: LocalAccount, node_ledger: Path,
                       before: tuple[int, int, int]) -> int:
    """Start the payer's withdrawal, wait for the node's claim, finish it; check the sums."""
    receipts = sum(r.amount for r in payer.receipts())
    assert payer.withdraw().state == "pending"  # the node must claim before it finalises
    node_total = int(ledger_rows(node_ledger, "SELECT COALESCE(SUM(amount), 0) FROM receipts"
                                 )[0][0])  # type: ignore[call-overload]
    wait_claimed(chain, payer, node_total)
    done = payer.withdraw(advance_time=True)
    assert done.state == "finalized"
    assert done.returned == DEPOSIT - node_total
    payer_before, node_before, supply = before
    # ``payer_before`` was read after the deposit: the deposit less the claims came back
    assert chain.balance(payer.account.address) == payer_before + DEPOSIT - node_total  # type: ignore[union-attr]
    deadline = time.monotonic() + 20
    while chain.balance(node.address) != node_before + node_total:  # the loop settles too
        assert time.monotonic() < deadline, (chain.balance(node.address), node_before, node_total)
        time.sleep(0.2)
    assert chain.supply() == supply
    assert node_total >= receipts
    return node_total - receipts


def test_two_hundred_paid_requests(chain: Chain, tiny_model: Path, tmp_path: Path) -> None:
    node, ledger, account = start_node(chain, tiny_model, tmp_path, 5,
                                       "--claim-max-requests", "64")
    try:
        payer = new_payer(chain, node.url, tmp_path)
        assert payer.account is not None
        before = (chain.balance(payer.account.address), chain.balance(account.address),
                  chain.supply())
        with httpx.Client(base_url=node.url, auth=PayerAuth(payer), timeout=60.0) as http:
            charged = [ask(http, i, stream=i % 2 == 1) for i in range(200)]
        assert all(c > 0 for c in charged)
        assert sum(charged) == sum(r.amount for r in payer.receipts()) == payer.state.charged  # type: ignore[union-attr]
        # the request-count threshold (64) claimed in batches while serving (a tick
        # every 0.2 s, so a batch may hold a few more than 64 requests)
        claims = ledger_rows(ledger, "SELECT COUNT(*) FROM claims")[0][0]
        assert claims in (2, 3), claims
        unclaimed = ledger_rows(ledger, "SELECT COUNT(*) FROM receipts WHERE claimed = 0")[0][0]
        assert unclaimed < 64 + 10, unclaimed  # type: ignore[operator]
        assert withdraw_and_check(chain, payer, account, ledger, before) == 0
    finally:
        node.stop()
    result = CliRunner().invoke(node_cli, ["earnings", "--ledger", str(ledger)])
    assert result.exit_code == 0, result.output
    assert "200" in result.output and "claim/settle transactions" in result.output


def test_sigkill_mid_stream_loses_no_voucher(chain: Chain, tiny_model: Path,
                                             tmp_path: Path) -> None:
    node, ledger, account = start_node(chain, tiny_model, tmp_path, 6)
    try:
        payer = new_payer(chain, node.url, tmp_path)
        assert payer.account is not None
        before = (chain.balance(payer.account.address), chain.balance(account.address),
                  chain.supply())
        with httpx.Client(base_url=node.url, auth=PayerAuth(payer), timeout=60.0) as http:
            for i in range(100):
                if i != 50:
                    ask(http, i, stream=i % 2 == 1)
                    continue
                body = {"model": "tiny", "max_tokens": 64, "stream": True,
                        "messages": [{"role": "user", "content": "A long story, please."}]}
                with pytest.raises(httpx.HTTPError), \
                        http.stream("POST", "/v1/chat/completions", json=body) as response:
                    assert response.status_code == 200
                    for _ in response.iter_bytes():
                        node.kill()  # the voucher is held in the ledger right now
                held = ledger_rows(ledger, "SELECT COUNT(*) FROM vouchers WHERE status='held'")
                assert held[0][0] == 1
                node.start()
        node_receipts = ledger_rows(ledger, "SELECT COUNT(*) FROM receipts")[0][0]
        assert node_receipts == len(payer.receipts()) == 99
        assert withdraw_and_check(chain, payer, account, ledger, before) == 0
    finally:
        node.stop()
