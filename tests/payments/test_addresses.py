"""Which addresses are used per chain: dev constants, SDK constants, settings overrides."""

from __future__ import annotations

import pytest
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
)

from agoranet.chain.addresses import resolve_addresses
from agoranet.chain.devchain import REGISTRY_ADDRESS, STABLECOIN_ADDRESS
from agoranet.config import ChainSettings
from agoranet.errors import ConfigError

REGISTRY = "0x00000000000000000000000000000000000000AA"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHAIN_ID", "STABLECOIN", "ESCROW", "COLLECTOR", "REGISTRY"):
        monkeypatch.delenv(f"AGORANET_CHAIN_{name}", raising=False)


def test_dev_chain() -> None:
    a = resolve_addresses(31337)
    assert (a.stablecoin, a.registry) == (STABLECOIN_ADDRESS, REGISTRY_ADDRESS)
    assert (a.escrow, a.collector) == (BATCH_SETTLEMENT_ADDRESS, ERC3009_DEPOSIT_COLLECTOR_ADDRESS)
    assert a.is_dev and a.network == "eip155:31337"


def test_base_sepolia_and_base_use_sdk_constants_and_usdc() -> None:
    sepolia = resolve_addresses(84532)
    assert sepolia.stablecoin == "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    assert sepolia.escrow == BATCH_SETTLEMENT_ADDRESS and sepolia.registry is None
    base = resolve_addresses(8453)
    assert base.stablecoin == "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    assert not base.is_dev


def test_unknown_chain_has_no_stablecoin() -> None:
    a = resolve_addresses(999_999)
    assert a.stablecoin is None and a.escrow == BATCH_SETTLEMENT_ADDRESS
    with pytest.raises(ConfigError, match="no stablecoin known for chain 999999"):
        a.require_stablecoin()


def test_settings_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORANET_CHAIN_REGISTRY", REGISTRY.lower())
    a = resolve_addresses(84532, ChainSettings())
    assert a.registry == REGISTRY
    with pytest.raises(ConfigError, match="AGORANET_CHAIN_CHAIN_ID is 8453"):
        resolve_addresses(84532, ChainSettings(chain_id=8453))
    with pytest.raises(ConfigError, match="AGORANET_CHAIN_ESCROW"):
        resolve_addresses(84532, ChainSettings(escrow="0xnope"))
