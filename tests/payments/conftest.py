"""Fixtures for the payment tests: one dev chain per module, a funded payer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from agoranet.chain.addresses import ChainAddresses, resolve_addresses
from agoranet.chain.devchain import DevChain, start_devchain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.payments.wallet import fund_dev

from .ledgers import ledgers, pg_server  # noqa: F401  (the ledger conformance fixtures)
from .support import ANVIL_MISSING


@dataclass
class Env:
    dev: DevChain
    w3: Web3
    addresses: ChainAddresses


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if ANVIL_MISSING:
        pytest.skip(ANVIL_MISSING)
    with start_devchain() as dev:
        w3 = connect(dev.rpc_url)
        yield Env(dev, w3, resolve_addresses(dev.chain_id, ChainSettings(rpc_url=dev.rpc_url)))


@pytest.fixture
def payer(env: Env) -> LocalAccount:
    """A fresh wallet key holding 100 stablecoin and 1 ETH (funded like `wallet fund`)."""
    account: LocalAccount = Account.create()
    fund_dev(env.w3, env.addresses, account.address, stablecoin=100_000_000, native=10**18)
    return account


@pytest.fixture
def receiver(env: Env) -> LocalAccount:
    """A node's key: dev account 2 (has ETH for claim gas)."""
    account: LocalAccount = Account.from_key(env.dev.private_keys[2])
    return account
