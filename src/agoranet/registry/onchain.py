"""The on-chain provider registry: nodes announce a URL and the hash of their signed offer.

A gateway lists the entries, fetches each node's offer, and accepts it only if
its hash matches the registered one and its signer is the registered address.
Tool servers register the same way (their :class:`~agoranet.registry.tool_offer.
ToolOffer`, under a URL ending in ``/tools``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from agoranet.chain.compiled import contract_abi
from agoranet.chain.rpc import TxResult, send
from agoranet.errors import OfferMismatchError
from agoranet.registry.offer import Offer
from agoranet.registry.signing import canonical_offer, offer_signer
from agoranet.registry.tool_offer import ToolOffer

__all__ = ["ProviderRegistry", "RegistryEntry", "check_offer", "offer_hash", "registry_at"]

_PAGE = 100


@dataclass(frozen=True)
class RegistryEntry:
    provider: str
    url: str
    offer_hash: str  # 0x-prefixed hex of 32 bytes
    updated_at: int


def offer_hash(offer: Offer | ToolOffer) -> str:
    """sha256 of the offer's canonical JSON (the bytes its signature covers)."""
    return "0x" + hashlib.sha256(canonical_offer(offer)).hexdigest()


def check_offer(offer: Offer | ToolOffer, entry: RegistryEntry) -> None:
    """Raise :class:`OfferMismatchError` unless ``offer`` is the one ``entry`` registered."""
    if offer_hash(offer) != entry.offer_hash.lower():
        raise OfferMismatchError(f"{entry.url}: the offer's hash is not the registered one")
    try:
        signer = offer_signer(offer)
    except ValueError as exc:
        raise OfferMismatchError(f"{entry.url}: {exc}") from exc
    if Web3.to_checksum_address(signer) != Web3.to_checksum_address(entry.provider):
        raise OfferMismatchError(f"{entry.url}: offer signed by {signer}, registered by "
                                 f"{entry.provider}")


@cache
def _abi() -> list[dict[str, Any]]:
    return contract_abi("ProviderRegistry")


class ProviderRegistry:
    def __init__(self, w3: Web3, address: str) -> None:
        self.w3 = w3
        self.contract = w3.eth.contract(address=Web3.to_checksum_address(address), abi=_abi())

    def entries(self) -> list[RegistryEntry]:
        total = int(self.contract.functions.providerCount().call())
        found: list[RegistryEntry] = []
        for start in range(0, total, _PAGE):
            for row in self.contract.functions.listProviders(start, _PAGE).call():
                provider, url, digest, updated = row
                found.append(RegistryEntry(str(provider), str(url), "0x" + bytes(digest).hex(),
                                           int(updated)))
        return found

    def register(self, account: LocalAccount, url: str, digest: str) -> TxResult:
        call = self.contract.functions.register(url, bytes.fromhex(digest.removeprefix("0x")))
        return send(self.w3, account, call, "register")

    def deregister(self, account: LocalAccount) -> TxResult:
        return send(self.w3, account, self.contract.functions.deregister(), "deregister")


def registry_at(rpc_url: str) -> ProviderRegistry:
    """The registry of the chain at ``rpc_url`` (its address from the chain settings)."""
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.rpc import connect
    from agoranet.config import ChainSettings
    from agoranet.errors import ConfigError

    w3 = connect(rpc_url)
    addresses = resolve_addresses(int(w3.eth.chain_id), ChainSettings(rpc_url=rpc_url))
    if addresses.registry is None:
        raise ConfigError(f"no provider registry is known on chain {w3.eth.chain_id}; "
                          "set AGORANET_CHAIN_REGISTRY")
    return ProviderRegistry(w3, addresses.registry)
