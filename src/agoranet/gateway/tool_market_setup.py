"""Building the gateway's tool market from its settings (``--tools``, the registry, a wallet)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from agoranet.config import GatewaySettings
from agoranet.gateway.budget import Budget
from agoranet.gateway.reputation import Reputation
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.tool_buying import ToolMarket
from agoranet.gateway.tool_directory import ToolDirectory
from agoranet.gateway.tool_payer import ToolPayers

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from agoranet.registry.onchain import RegistryEntry

__all__ = ["tool_market"]


def tool_market(settings: GatewaySettings, client: httpx.AsyncClient, budget: Budget,
                spend: SpendLog, reputation: Reputation | None,
                registry: Callable[[], list[RegistryEntry]] | None,
                account: LocalAccount | None) -> ToolMarket:
    """The tool sellers of ``settings.tools`` and the registry's; paid from ``account``'s
    channels (under ``channels/tools`` beside the spend log; ``settings.tool_channels`` a
    seller at most) when there is a wallet."""
    payers = None
    if account is not None and settings.rpc_url:
        payers = ToolPayers(settings.rpc_url, account, settings.channels_dir() / "tools",
                            settings.deposit, budget, spend,
                            chain_timeout_s=settings.chain_timeout_s, reputation=reputation,
                            channels=settings.tool_channels)
    directory = ToolDirectory(settings.tools, client, settings.refresh_s, registry)
    return ToolMarket(directory, client, budget, spend, payers, reputation)
