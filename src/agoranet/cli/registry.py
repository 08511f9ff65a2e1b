"""``agoranet registry``: announce a node or a tool server on chain, list who is there.

A tool server (its offer's ``kind`` is ``tools``) is registered under its root URL
followed by ``/tools``, a node under its ``/v1`` URL; ``registry list`` tells them apart
by that (``kind``), and with ``--offers`` fetches each offer, checks it against its
entry (hash and signer) and says what it sells.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx

from agoranet.cli.output import Col, Listing, emit, listing_options, when
from agoranet.cli.wallet_common import console, keystore_option, rpc_option, unlock_wallet
from agoranet.errors import ConfigError, OfferMismatchError

if TYPE_CHECKING:
    from agoranet.registry.offer import Offer
    from agoranet.registry.onchain import RegistryEntry
    from agoranet.registry.tool_offer import ToolOffer

__all__ = ["registry"]

_OFFER_TIMEOUT_S = 5.0


@click.group()
def registry() -> None:
    """The on-chain provider registry."""


@registry.command("list")
@rpc_option
@click.option("--offers", is_flag=True, default=False,
              help="Fetch each offer, check it against its entry, say what it sells.")
@listing_options(amounts=False)
def list_providers(rpc_url: str, offers: bool, listing: Listing) -> None:
    """Every registered provider, node or tool server: kind, address, URL, last update,
    offer hash (and with --offers what it sells, or why its offer is refused)."""
    from agoranet.registry.onchain import registry_at
    from agoranet.registry.tool_offer import is_tool_url

    entries = registry_at(rpc_url).entries()
    sells: list[dict[str, Any]] = []
    if offers and entries:
        with ThreadPoolExecutor(max_workers=min(16, len(entries))) as pool:
            sells = list(pool.map(_sells, entries))
    cols = [Col("kind"), Col("provider", key=True), Col("url", key=True),
            Col("updated", keep=True), Col("offer sha256", wide=True)]
    if offers:
        cols.insert(3, Col("sells"))
    rows, data = [], []
    for i, e in enumerate(entries):
        kind = "tools" if is_tool_url(e.url) else "node"
        row = [kind, e.provider, e.url, when(e.updated_at), e.offer_hash]
        item: dict[str, Any] = {"kind": kind, "provider": e.provider, "url": e.url,
                                "offer_sha256": e.offer_hash, "updated_at": e.updated_at}
        if offers:
            row.insert(3, sells[i]["summary"])
            item["offer"] = sells[i]
        rows.append(row)
        data.append(item)
    emit(listing, cols, rows, data, title="registered providers", empty="none registered")


def _sells(entry: RegistryEntry) -> dict[str, Any]:
    """What ``entry``'s offer sells, checked against the entry: ``{"status": "ok" |
    "refused" | "unavailable", "summary", "models" | "tools"}``."""
    from agoranet.errors import OfferMismatchError
    from agoranet.registry.onchain import check_offer
    from agoranet.registry.tool_offer import ToolOffer

    try:
        offer = _fetch_offer(entry.url)
    except ConfigError as exc:
        return {"status": "unavailable", "summary": "offer unavailable", "error": str(exc)}
    try:
        check_offer(offer, entry)
    except OfferMismatchError as exc:
        return {"status": "refused", "summary": "refused: forged or changed offer",
                "error": str(exc)}
    if isinstance(offer, ToolOffer):
        names = [t.name for t in offer.tools]
        tools = [{"name": t.name, "price": t.price.model_dump(exclude_none=True),
                  "schema_sha256": t.schema_sha256} for t in offer.tools]
        return {"status": "ok", "summary": "tools: " + ", ".join(names), "tools": tools}
    models = [m.id for m in offer.models]
    return {"status": "ok", "summary": "models: " + ", ".join(models), "models": models}


def _fetch_offer(url: str) -> Offer | ToolOffer:
    """The offer served by the node or tool server registered at ``url`` (ConfigError if
    it cannot be read)."""
    from agoranet.registry.offer import Offer
    from agoranet.registry.tool_offer import ToolOffer, is_tool_url, tool_root

    root = tool_root(url) if is_tool_url(url) else url.rstrip("/").removesuffix("/v1")
    try:
        response = httpx.get(root + "/.well-known/agoranet", timeout=_OFFER_TIMEOUT_S)
        response.raise_for_status()
        data = response.json()
        if isinstance(data, dict) and data.get("kind") == "tools":
            return ToolOffer.model_validate(data)
        return Offer.model_validate(data)
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(f"cannot read the offer at {root}: {exc}") from exc


@registry.command()
@click.option("--url", "node_url", required=True,
              help="The node's public URL (…/v1), or a tool server's (its root).")
@keystore_option
@rpc_option
def register(node_url: str, keystore: Path | None, rpc_url: str) -> None:
    """Register (or update) a node or a tool server: its URL and the hash of its signed
    offer (a tool server is entered under its root URL followed by /tools)."""
    from agoranet.cli.preflight import REGISTER_GAS, connect_chain_or_hint, require_gas
    from agoranet.gateway.directory import normalise_url
    from agoranet.registry.onchain import RegistryEntry, check_offer, offer_hash, registry_at
    from agoranet.registry.tool_offer import ToolOffer, registry_url, tool_root

    offer = _fetch_offer(node_url)
    url = registry_url(node_url) if isinstance(offer, ToolOffer) else normalise_url(node_url)
    account = unlock_wallet(keystore)
    digest = offer_hash(offer)
    try:
        check_offer(offer, RegistryEntry(account.address, url, digest, 0))
        if isinstance(offer, ToolOffer):  # as a gateway will check it
            from agoranet.gateway.tool_directory import verify_tool_offer

            verify_tool_offer(offer, tool_root(url), None)
    except OfferMismatchError as exc:
        raise ConfigError(f"{exc}; start the node or tool server with this wallet's "
                          "keystore") from exc
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
