"""The banner ``agoranet node`` prints once it is ready: what it serves, at what price,
for whom the money goes, and where it is kept."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agoranet.config import NodeSettings

if TYPE_CHECKING:
    from agoranet.cli.preflight import LedgerLock
    from agoranet.engines.base import ModelInfo
    from agoranet.node.payment_setup import NodePayments

__all__ = ["CLAIM_GAS", "PaidSetup", "no_gas_warning", "node_banner"]

CLAIM_GAS: Final = 300_000  # a claim and its settle, with room to spare


@dataclass
class PaidSetup:
    """A paid node's parts, checked before its model loads."""

    payments: NodePayments
    gas_balance: int  # wei at the node's address when it started
    gas_needed: int  # wei one claim and settle may cost at the fees when it started
    ledger: Path | str  # a SQLite file, or a PostgreSQL URL (its password hidden)
    lock: LedgerLock | None  # held while the node runs: one process per SQLite ledger


def node_banner(console: Console, settings: NodeSettings, models: Sequence[ModelInfo],
                paid: PaidSetup | None) -> None:
    """Print the node's banner (two columns that fit 80)."""
    from agoranet.cli.preflight import format_eth

    table = Table(title=f"agoranet node on http://{settings.host}:{settings.port}/v1",
                  show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for info in models:
        sha = (info.model_sha256 or "-")[:16]
        table.add_row("model", Text(f"{info.name} (context {info.context_length}, "
                                    f"weights {sha})"))
    prices = (f"in {settings.price_in} / out {settings.price_out} base units per 1M tokens")
    if settings.price_commitments:
        prices += f"; commitments +{settings.price_commitments}"
    if settings.fine_tuning and settings.price_training:
        prices += f"; training {settings.price_training}"
    table.add_row("prices", Text(prices))
    if paid is None:
        table.add_row("payment", "free: no payment asked" if settings.free or not (
            settings.price_in or settings.price_out) else "free (--free)")
    else:
        terms = paid.payments.acceptor.terms
        table.add_row("paid to", Text(f"{paid.payments.account.address} (x402)"))
        table.add_row("chain", Text(f"{terms.network} via {settings.rpc_url}"))
        low = paid.gas_balance < paid.gas_needed
        table.add_row("gas", Text(f"{format_eth(paid.gas_balance)} ETH"
                                  + (" (too little to claim: see the warning above)" if low
                                     else "")))
        table.add_row("ledger", Text(str(paid.ledger)))
        table.add_row("claims", Text(
            f"when {settings.claim_min_amount} base units, {settings.claim_max_requests} "
            f"requests or {settings.claim_max_age:g} s are unclaimed (checked every "
            f"{settings.settle_interval:g} s); now: `agoranet node claim`"))
    console.print(table)


def no_gas_warning(address: str, balance: int) -> str:
    from agoranet.cli.preflight import format_eth

    return (f"warning: {address} has {format_eth(balance)} ETH, too "
            "little gas to claim its earnings; fund it (dev chain: `agoranet wallet fund "
            f"--to {address}`)")
