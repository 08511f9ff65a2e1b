"""Helpers for the payment and wallet tests: anvil detection, fast keystores, claims."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from agoranet.chain.addresses import ChainAddresses
from agoranet.chain.devchain import find_anvil
from agoranet.chain.rpc import TxResult, send
from agoranet.errors import DevChainError
from agoranet.payments.channels import config_tuple, escrow_contract
from agoranet.payments.wallet import create_keystore, stablecoin_contract

try:
    find_anvil()
    ANVIL_MISSING = ""
except DevChainError as exc:
    ANVIL_MISSING = str(exc)

needs_anvil = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(ANVIL_MISSING), reason=ANVIL_MISSING or "anvil found"),
]
PASSWORD = "pw-Never-Printed-93f1"
FAST_SCRYPT_N = 2**10  # tests only: the CLI always writes the default work factor


def fast_keystore(path: Path, password: str = PASSWORD, key: bytes | None = None) -> str:
    return create_keystore(path, password, private_key=key, scrypt_n=FAST_SCRYPT_N)


def token_balance(w3: Web3, addresses: ChainAddresses, who: str) -> int:
    return int(stablecoin_contract(w3, addresses).functions.balanceOf(who).call())


def channel_state(w3: Web3, addresses: ChainAddresses, channel_id: str) -> tuple[int, int]:
    escrow = escrow_contract(w3, addresses)
    balance, claimed = escrow.functions.channels(bytes.fromhex(channel_id[2:])).call()
    return int(balance), int(claimed)


def claim(
    w3: Web3,
    addresses: ChainAddresses,
    receiver: LocalAccount,
    config: ChannelConfig,
    max_claimable: int,
    signature: str,
    total: int,
) -> TxResult:
    """The receiver claims ``total`` (cumulative) against a voucher, sending the tx itself."""
    row: Any = ((config_tuple(config), max_claimable), bytes.fromhex(signature[2:]), total)
    call = escrow_contract(w3, addresses).functions.claim([row])
    return send(w3, receiver, call, "claim")


def settle(w3: Web3, addresses: ChainAddresses, sender: LocalAccount, receiver: str) -> TxResult:
    call = escrow_contract(w3, addresses).functions.settle(receiver, addresses.stablecoin)
    return send(w3, sender, call, "settle")
