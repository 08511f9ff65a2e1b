"""Helpers for the paid tool server tests: a dev chain, a tool server process, payers."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402 import x402Client
from x402.mechanisms.evm.batch_settlement.client.scheme import BatchSettlementEvmScheme
from x402.mechanisms.evm.exact.register import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner, EthAccountSignerWithRPC

from agoranet.chain.addresses import ChainAddresses
from agoranet.chain.devchain import DevChain
from agoranet.node.launcher import running_command
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore, stablecoin_contract
from agoranet.testing.tool_kit import CALLS_ENV, calls

__all__ = [
    "PASSWORD",
    "Chain",
    "ToolProcess",
    "claimed_on_chain",
    "ledger_charged",
    "ledger_receipts",
    "sdk_client",
    "serve_tools",
    "token_balance",
    "wait_claimed",
]

PASSWORD = "pw-tools-3f9a"


@dataclass
class Chain:
    dev: DevChain
    w3: Web3
    addresses: ChainAddresses


@dataclass
class ToolProcess:
    root: str  # http://127.0.0.1:PORT
    seller: LocalAccount
    ledger: Path
    calls_file: Path
    log: Path

    def calls(self) -> list[str]:
        return calls(self.calls_file)


@contextlib.contextmanager
def serve_tools(chain: Chain, folder: Path, args: Sequence[str], *, key_index: int = 3,
                timeout: float = 90.0) -> Iterator[ToolProcess]:
    """``agoranet tools serve ARGS`` paid to dev account ``key_index``, claiming every
    charged call at once (claim threshold 1 base unit, checked every 0.3 s)."""
    seller: LocalAccount = Account.from_key(chain.dev.private_keys[key_index])
    keystore = folder / "keystore.json"
    if not keystore.exists():
        create_keystore(keystore, PASSWORD, private_key=bytes(seller.key), scrypt_n=2**10)
    ledger = folder / "tools-ledger.sqlite"
    calls_file = folder / "calls.txt"
    log = folder / "tools.log"
    saved = {k: os.environ.get(k) for k in (PASSWORD_ENV_VAR, CALLS_ENV)}
    os.environ[PASSWORD_ENV_VAR] = PASSWORD
    os.environ[CALLS_ENV] = str(calls_file)
    try:
        with running_command(
                ["-v", "tools", "serve", *args, "--rpc-url", chain.dev.rpc_url, "--keystore",
                 str(keystore), "--ledger", str(ledger), "--claim-min-amount", "1",
                 "--settle-interval", "0.3"], timeout=timeout, output=log) as url:
            yield ToolProcess(url.removesuffix("/v1"), seller, ledger, calls_file, log)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def sdk_client(chain: Chain, payer: LocalAccount, scheme: str) -> x402Client:
    """The x402 SDK's client with both EVM schemes; it picks ``scheme`` from a 402."""
    client = x402Client(payment_requirements_selector=lambda _version, reqs: next(
        r for r in reqs if r.scheme == scheme))
    client.set_spend_controls({"allowed_assets": [{
        "network": chain.dev.network, "asset": chain.addresses.require_stablecoin(),
        "max_amount_per_payment": "1000000"}]})
    register_exact_evm_client(client, EthAccountSigner(payer))
    client.register("eip155:*", BatchSettlementEvmScheme(
        EthAccountSignerWithRPC(payer, chain.dev.rpc_url)))
    return client


def token_balance(chain: Chain, who: str) -> int:
    return int(stablecoin_contract(chain.w3, chain.addresses).functions.balanceOf(who).call())


def _settled(ledger: Path, channel_id: str, sql: str, timeout: float = 10.0
             ) -> list[tuple[Any, ...]]:
    """``sql``'s rows from the seller's ledger once no call holds the channel (a voucher's
    charge is written just after its answer has gone out), or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
            held = db.execute("SELECT 1 FROM channels WHERE channel_id = ? AND "
                              "pending_request IS NOT NULL", (channel_id.lower(),)).fetchone()
            if held is None or time.monotonic() > deadline:
                return db.execute(sql, (channel_id.lower(),)).fetchall()
        time.sleep(0.01)


def ledger_charged(ledger: Path, channel_id: str) -> int:
    """What the seller's ledger says was charged on the channel (0 if unknown)."""
    rows = _settled(ledger, channel_id, "SELECT charged FROM channels WHERE channel_id = ?")
    return int(rows[0][0]) if rows else 0


def claimed_on_chain(chain: Chain, channel_id: str) -> tuple[int, int]:
    """(balance, claimed) of the channel in the escrow."""
    from agoranet.payments.channels import escrow_contract

    balance, claimed = escrow_contract(chain.w3, chain.addresses).functions.channels(
        bytes.fromhex(channel_id[2:])).call()
    return int(balance), int(claimed)


def wait_claimed(chain: Chain, channel_id: str, total: int, deadline_s: float = 60.0) -> None:
    """Until the seller's settlement loop has claimed ``total`` on the channel (bounded)."""
    deadline = time.monotonic() + deadline_s
    while claimed_on_chain(chain, channel_id)[1] != total:
        if time.monotonic() > deadline:
            raise AssertionError(f"the tool server never claimed {total} on {channel_id}: "
                                 f"the chain shows {claimed_on_chain(chain, channel_id)}")
        time.sleep(0.2)


def first(items: Any) -> Any:
    return next(iter(items))


def ledger_receipts(ledger: Path, channel_id: str) -> list[int]:
    """The amounts of the seller's receipts on the channel, in order."""
    rows = _settled(ledger, channel_id, "SELECT amount FROM receipts WHERE channel_id = ? "
                    "ORDER BY cumulative")
    return [int(r[0]) for r in rows]
