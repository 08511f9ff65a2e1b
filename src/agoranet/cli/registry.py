"""``agoranet registry``: announce a node on chain, list who is there."""

from __future__ import annotations

from pathlib import Path

import click
import httpx
from rich.table import Table

from agoranet.cli.wallet_common import console, keystore_option, rpc_option, unlock_wallet
from agoranet.errors import ConfigError, OfferMismatchError

__all__ = ["registry"]


@click.group()
def registry() -> None:
    """The on-chain provider registry."""


@registry.command("list")
@rpc_option
def list_providers(rpc_url: str) -> None:
    """Every registered provider: address, URL, offer hash."""
    from agoranet.registry.onchain import registry_at

    table = Table(title="registered providers")
    for column in ("provider", "url", "offer sha256", "updated"):
        table.add_column(column)
    for entry in registry_at(rpc_url).entries():
        table.add_row(entry.provider, entry.url, entry.offer_hash[:18] + "…",
                      str(entry.updated_at))
    console.print(table)


@registry.command()
@click.option("--url", "node_url", required=True, help="The node's public URL (…/v1).")
@keystore_option
@rpc_option
def register(node_url: str, keystore: Path | None, rpc_url: str) -> None:
    """Register (or update) a node: its URL and the hash of its signed offer."""
    from agoranet.gateway.directory import normalise_url
    from agoranet.registry.offer import Offer
    from agoranet.registry.onchain import RegistryEntry, check_offer, offer_hash, registry_at

    url = normalise_url(node_url)
    try:
        response = httpx.get(url.removesuffix("/v1") + "/.well-known/agoranet", timeout=10)
        response.raise_for_status()
        offer = Offer.model_validate_json(response.content)
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(f"cannot read the offer of {url}: {exc}") from exc
    account = unlock_wallet(keystore)
    digest = offer_hash(offer)
    try:
        check_offer(offer, RegistryEntry(account.address, url, digest, 0))
    except OfferMismatchError as exc:
        raise ConfigError(f"{exc}; start the node with this wallet's keystore") from exc
    result = registry_at(rpc_url).register(account, url, digest)
    console.print(f"registered {url} for {account.address} (offer {digest[:18]}…, "
                  f"gas {result.gas_used})")


@registry.command()
@keystore_option
@rpc_option
def deregister(keystore: Path | None, rpc_url: str) -> None:
    """Remove this wallet's node from the registry."""
    from agoranet.registry.onchain import registry_at

    account = unlock_wallet(keystore)
    registry_at(rpc_url).deregister(account)
    console.print(f"deregistered {account.address}")
