"""``agoranet registry``: announce a node on chain, list who is there."""

from __future__ import annotations

from pathlib import Path

import click
import httpx

from agoranet.cli.output import Col, Listing, emit, listing_options, when
from agoranet.cli.wallet_common import console, keystore_option, rpc_option, unlock_wallet
from agoranet.errors import ConfigError, OfferMismatchError

__all__ = ["registry"]


@click.group()
def registry() -> None:
    """The on-chain provider registry."""


@registry.command("list")
@rpc_option
@listing_options(amounts=False)
def list_providers(rpc_url: str, listing: Listing) -> None:
    """Every registered provider: address, URL, offer hash, last update."""
    from agoranet.registry.onchain import registry_at

    entries = registry_at(rpc_url).entries()
    cols = (Col("provider", key=True), Col("url", key=True), Col("updated", keep=True),
            Col("offer sha256", wide=True))
    rows = [[e.provider, e.url, when(e.updated_at), e.offer_hash] for e in entries]
    data = [{"provider": e.provider, "url": e.url, "offer_sha256": e.offer_hash,
             "updated_at": e.updated_at} for e in entries]
    emit(listing, cols, rows, data, title="registered providers", empty="none registered")


@registry.command()
@click.option("--url", "node_url", required=True, help="The node's public URL (…/v1).")
@keystore_option
@rpc_option
def register(node_url: str, keystore: Path | None, rpc_url: str) -> None:
    """Register (or update) a node: its URL and the hash of its signed offer."""
    from agoranet.cli.preflight import REGISTER_GAS, connect_chain_or_hint, require_gas
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
    require_gas(connect_chain_or_hint(rpc_url), account.address, REGISTER_GAS, "a registration")
    result = registry_at(rpc_url).register(account, url, digest)
    console.print(f"registered {url} for {account.address} (offer {digest[:18]}…, "
                  f"gas {result.gas_used})")


@registry.command()
@keystore_option
@rpc_option
def deregister(keystore: Path | None, rpc_url: str) -> None:
    """Remove this wallet's node from the registry."""
    from agoranet.cli.preflight import REGISTER_GAS, connect_chain_or_hint, require_gas
    from agoranet.registry.onchain import registry_at

    account = unlock_wallet(keystore)
    require_gas(connect_chain_or_hint(rpc_url), account.address, REGISTER_GAS,
                "a deregistration")
    registry_at(rpc_url).deregister(account)
    console.print(f"deregistered {account.address}")
