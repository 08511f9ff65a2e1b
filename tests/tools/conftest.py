"""Fixtures for the paid tool server: one dev chain and one tool server per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import find_anvil, start_devchain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.errors import DevChainError
from agoranet.payments.wallet import fund_dev

from .support import Chain, ToolProcess, serve_tools


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    try:
        find_anvil()
    except DevChainError as exc:
        pytest.skip(str(exc))
    with start_devchain() as dev:
        w3 = connect(dev.rpc_url)
        yield Chain(dev, w3, resolve_addresses(dev.chain_id, ChainSettings(rpc_url=dev.rpc_url)))


@pytest.fixture(scope="module")
def kit(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolProcess]:
    """``agoranet tools serve agoranet.testing.tool_kit:tools`` on the dev chain."""
    with serve_tools(chain, tmp_path_factory.mktemp("kit"),
                     ["agoranet.testing.tool_kit:tools"]) as process:
        yield process


@pytest.fixture
def payer(chain: Chain) -> LocalAccount:
    """A fresh buyer holding 100 stablecoin and 1 ETH."""
    account: LocalAccount = Account.create()
    fund_dev(chain.w3, chain.addresses, account.address, stablecoin=100_000_000, native=10**18)
    return account

