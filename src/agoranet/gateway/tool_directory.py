"""Discovery of paid tool servers: their signed offers, checked, refreshed in the background.

Sellers come from ``--tools URL`` (repeatable) and from the on-chain registry (entries
whose URL ends in ``/tools``, :func:`~agoranet.registry.tool_offer.is_tool_url`). Each
seller's :class:`~agoranet.registry.tool_offer.ToolOffer` is fetched from its root's
``/.well-known/agoranet`` and accepted only when

- it is signed, and by its payee (``payment.pay_to``) when it sells for payment;
- its ``url`` is the root it was fetched from;
- for a registered seller, its hash and signer are the registered ones
  (:func:`~agoranet.registry.onchain.check_offer`).

A forged or tampered offer is refused with a warning in the log and the seller's
``offer_error``; its tools are not listed and cannot be bought.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError
from web3 import Web3

from agoranet.api import jsonlimits
from agoranet.errors import AgoranetError, InvalidJSONError, OfferMismatchError
from agoranet.gateway.directory import MAX_OFFER_BYTES
from agoranet.gateway.refresh_loop import RefreshLoop
from agoranet.registry.signing import offer_signer
from agoranet.registry.tool_offer import ToolOffer, is_tool_url, tool_root

if TYPE_CHECKING:
    from agoranet.registry.onchain import RegistryEntry

__all__ = ["ToolDirectory", "ToolSeller", "verify_tool_offer"]

logger = logging.getLogger(__name__)

_OFFER_DEADLINE_S = 10.0


@dataclass
class ToolSeller:
    """One tool server: its root URL, its checked offer (None until one is accepted)."""

    root: str
    offer: ToolOffer | None = None
    offer_error: str | None = None
    registered: RegistryEntry | None = None
    events: list[str] = field(default_factory=list)

    @property
    def identity(self) -> str:
        """Who it is in the reputation store: its registered address, else its payee,
        else its URL."""
        if self.registered is not None:
            return _checksummed(self.registered.provider)
        if self.offer is not None and self.offer.payment is not None:
            return _checksummed(self.offer.payment.pay_to)
        return self.root


@functools.lru_cache(maxsize=4096)
def _checksummed(address: str) -> str:
    """``address`` checksummed (a keccak each time: cached, as it is asked on every call)."""
    return Web3.to_checksum_address(address)


def verify_tool_offer(offer: ToolOffer, root: str, registered: RegistryEntry | None) -> None:
    """OfferMismatchError unless ``offer`` (fetched from ``root``) is signed by its payee,
    names ``root``, and matches its registry entry (if any)."""
    try:
        signer = offer_signer(offer)
    except ValueError as exc:
        raise OfferMismatchError(f"{root}: {exc}") from exc
    if offer.payment is not None and \
            Web3.to_checksum_address(offer.payment.pay_to) != signer:
        raise OfferMismatchError(f"{root}: the offer is signed by {signer}, not by its payee "
                                 f"{offer.payment.pay_to}")
    if tool_root(offer.url) != tool_root(root):
        raise OfferMismatchError(f"{root}: the offer is for {offer.url}")
    if registered is not None:
        from agoranet.registry.onchain import check_offer

        check_offer(offer, registered)


class ToolDirectory:
    """The tool sellers the gateway may buy from, keyed by root URL."""

    def __init__(self, urls: list[str], client: httpx.AsyncClient, refresh_s: float = 30.0,
                 registry: Callable[[], list[RegistryEntry]] | None = None) -> None:
        self.sellers: dict[str, ToolSeller] = {}
        for url in urls:
            self.add(url)
        self._client = client
        self._registry = registry
        self._refresher = RefreshLoop(self, refresh_s)

    def add(self, url: str) -> ToolSeller:
        root = tool_root(url)
        return self.sellers.setdefault(root, ToolSeller(root))

    async def refresh(self, *, missing_only: bool = False) -> None:
        if self._registry is not None and not missing_only:
            try:
                entries = await asyncio.to_thread(self._registry)
            except AgoranetError as exc:
                logger.warning("registry unavailable: %s", exc)
            else:
                for entry in entries:
                    if is_tool_url(entry.url):
                        self.add(entry.url).registered = entry
        sellers = [s for s in self.sellers.values() if not missing_only or s.offer is None]
        await asyncio.gather(*(self.fetch(s) for s in sellers))

    async def fetch(self, seller: ToolSeller) -> None:
        """Fetch and check ``seller``'s offer; a refused one removes its tools."""
        try:
            async with asyncio.timeout(_OFFER_DEADLINE_S), self._client.stream(
                    "GET", f"{seller.root}/.well-known/agoranet", timeout=5.0) as response:
                response.raise_for_status()
                raw = await jsonlimits.read_limited(response, MAX_OFFER_BYTES, what="the offer")
            offer = ToolOffer.model_validate_json(raw)
            verify_tool_offer(offer, seller.root, seller.registered)
            seller.offer, seller.offer_error = offer, None
        except OfferMismatchError as exc:
            self._refuse(seller, f"refused: {exc}")
        except TimeoutError:
            seller.offer_error = f"offer unavailable: not sent within {_OFFER_DEADLINE_S:g} s"
            logger.info("%s: %s", seller.root, seller.offer_error)
        except ValidationError as exc:  # a malformed offer (a tool's hash not its schemas')
            self._refuse(seller, f"refused: {seller.root}: malformed offer: {exc}")
        except (httpx.HTTPError, InvalidJSONError) as exc:
            seller.offer_error = f"offer unavailable: {exc}"
            logger.info("%s: %s", seller.root, seller.offer_error)

    @staticmethod
    def _refuse(seller: ToolSeller, error: str) -> None:
        """Drop ``seller``'s offer; a warning the first time it is refused for this."""
        if seller.offer_error != error:
            logger.warning("tool offer %s", error)
        seller.offer, seller.offer_error = None, error

    def start(self, retry_s: float = 2.0) -> None:
        """Refresh now, then every ``refresh_s`` seconds (sellers without an offer every
        ``retry_s``), until :meth:`stop`."""
        self._refresher.start(retry_s)

    async def stop(self) -> None:
        await self._refresher.stop()
