"""Which contract addresses agoranet uses on a given chain.

- Dev chain (31337): our contracts at the constants the dev chain installs.
- Any other chain: the x402 SDK's batch-settlement escrow and ERC-3009 deposit
  collector (deployed at the same CREATE2 addresses everywhere), the chain's
  USDC from the SDK's default-asset table when it has one, and our provider
  registry only where :class:`~agoranet.config.ChainSettings` names it.

Addresses pinned in the settings (``AGORANET_CHAIN_*``) always win.
"""

from __future__ import annotations

from dataclasses import dataclass

from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.default_assets import DEFAULT_ASSETS

from agoranet.chain.devchain import REGISTRY_ADDRESS, STABLECOIN_ADDRESS
from agoranet.chain.rpc import DEV_CHAIN_ID
from agoranet.config import ChainSettings
from agoranet.errors import ConfigError
from agoranet.payments.amounts import parse_address

__all__ = ["ChainAddresses", "resolve_addresses"]

_DEV_TOKEN_NAME = "USD Coin"
_DEV_TOKEN_VERSION = "2"


@dataclass(frozen=True)
class ChainAddresses:
    """The addresses (and stablecoin EIP-712 domain) used on one chain; ``None`` = none known."""

    chain_id: int
    stablecoin: str | None
    escrow: str
    collector: str
    registry: str | None
    token_name: str | None
    token_version: str | None
    token_decimals: int = 6

    @property
    def network(self) -> str:
        return f"eip155:{self.chain_id}"

    @property
    def is_dev(self) -> bool:
        return self.chain_id == DEV_CHAIN_ID

    def require_stablecoin(self) -> str:
        if self.stablecoin is None:
            raise ConfigError(
                f"no stablecoin known for chain {self.chain_id}: set AGORANET_CHAIN_STABLECOIN"
            )
        return self.stablecoin

    def rows(self) -> list[tuple[str, str]]:
        """(name, address or '-') for display."""
        return [
            ("stablecoin", self.stablecoin or "-"),
            ("escrow", self.escrow),
            ("collector", self.collector),
            ("registry", self.registry or "-"),
        ]


def resolve_addresses(chain_id: int, settings: ChainSettings | None = None) -> ChainAddresses:
    """The addresses for ``chain_id``, with any set in ``settings`` taking precedence."""
    settings = settings or ChainSettings()
    if settings.chain_id is not None and settings.chain_id != chain_id:
        raise ConfigError(
            f"the RPC URL serves chain {chain_id} but AGORANET_CHAIN_CHAIN_ID is {settings.chain_id}"
        )
    if chain_id == DEV_CHAIN_ID:
        stablecoin: str | None = STABLECOIN_ADDRESS
        registry: str | None = REGISTRY_ADDRESS
        name: str | None = _DEV_TOKEN_NAME
        version: str | None = _DEV_TOKEN_VERSION
        decimals = 6
    else:
        assets = DEFAULT_ASSETS.get(f"eip155:{chain_id}") or []
        usdc = next((a for a in assets if a.get("symbol") == "USDC"), None)
        stablecoin = usdc["asset"] if usdc else None
        name = usdc["name"] if usdc else None
        version = usdc["version"] if usdc else None
        decimals = usdc["decimals"] if usdc else 6
        registry = None
    pinned_coin = _pinned(settings.stablecoin, "AGORANET_CHAIN_STABLECOIN")
    if pinned_coin is not None and pinned_coin != stablecoin:
        stablecoin = pinned_coin
        name, version = (
            (_DEV_TOKEN_NAME, _DEV_TOKEN_VERSION) if chain_id == DEV_CHAIN_ID else (None, None)
        )
    return ChainAddresses(
        chain_id=chain_id,
        stablecoin=stablecoin,
        escrow=_pinned(settings.escrow, "AGORANET_CHAIN_ESCROW") or BATCH_SETTLEMENT_ADDRESS,
        collector=_pinned(settings.collector, "AGORANET_CHAIN_COLLECTOR")
        or ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
        registry=_pinned(settings.registry, "AGORANET_CHAIN_REGISTRY") or registry,
        token_name=name,
        token_version=version,
        token_decimals=decimals,
    )


def _pinned(value: str | None, env: str) -> str | None:
    return parse_address(value, what=env) if value else None
