"""Discovery: the nodes the gateway may use and their offers, refreshed in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError

from agoranet.api import jsonlimits
from agoranet.errors import AgoranetError, InvalidJSONError, OfferMismatchError
from agoranet.gateway.adapter_listing import fetch_public_adapters
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.refresh_loop import RefreshLoop
from agoranet.gateway.reputation import Reputation
from agoranet.registry.offer import Offer
from agoranet.registry.tool_offer import is_tool_url

if TYPE_CHECKING:
    from agoranet.registry.onchain import RegistryEntry

__all__ = ["MAX_OFFER_BYTES", "NodeDirectory", "normalise_url"]

logger = logging.getLogger(__name__)

MAX_OFFER_BYTES = 1024 * 1024  # an offer is a few KB; a node cannot make us buffer more
_OFFER_DEADLINE_S = 10.0  # for the whole offer, however slowly it trickles


def normalise_url(url: str) -> str:
    """A node's OpenAI base URL, ending in ``/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


class NodeDirectory:
    """Static node URLs (``--node``); on-chain registry discovery adds to the same map."""

    def __init__(self, urls: list[str], client: httpx.AsyncClient, refresh_s: float = 30.0,
                 registry: Callable[[], list[RegistryEntry]] | None = None,
                 reputation: Reputation | None = None) -> None:
        self.nodes: dict[str, NodeState] = {}
        self.reputation = reputation  # every node records its events there
        for url in urls:
            self.add(url)
        self._client = client
        self._registry = registry
        self._refresher = RefreshLoop(self, refresh_s)

    def add(self, url: str) -> NodeState:
        url = normalise_url(url)
        return self.nodes.setdefault(url, NodeState(url, reputation=self.reputation))

    async def refresh(self, *, missing_only: bool = False) -> None:
        if self._registry is not None and not missing_only:
            await self._discover(self._registry)
        nodes = [n for n in self.nodes.values() if not missing_only or n.offer is None]
        await asyncio.gather(*(self._fetch(n) for n in nodes))

    async def _discover(self, registry: Callable[[], list[RegistryEntry]]) -> None:
        """Add every registered node; a node whose entry changed is checked afresh (by the
        fetch that follows in the same refresh: its offer, checked under the earlier entry,
        serves until then, so a re-registration never leaves a gap without the node)."""
        try:
            entries = await asyncio.to_thread(registry)
        except AgoranetError as exc:
            logger.warning("registry unavailable: %s", exc)
            return
        for entry in entries:
            if is_tool_url(entry.url):  # a tool server's (agoranet.gateway.tool_directory)
                continue
            node = self.add(entry.url)
            if node.registered != entry:
                node.registered = entry

    async def _fetch(self, node: NodeState) -> None:
        root = node.url.removesuffix("/v1")
        try:
            async with asyncio.timeout(_OFFER_DEADLINE_S), self._client.stream(
                    "GET", f"{root}/.well-known/agoranet", timeout=5.0) as response:
                response.raise_for_status()
                raw = await jsonlimits.read_limited(response, MAX_OFFER_BYTES, what="the offer")
            offer = Offer.model_validate_json(raw)
            if node.registered is not None:
                from agoranet.registry.onchain import check_offer

                check_offer(offer, node.registered)
            if any(m.adapters.accepted for m in offer.models):  # listed with the offer
                listed = await fetch_public_adapters(self._client, node.url, offer)
                node.public_adapters = node.public_adapters if listed is None else listed
            node.offer, node.offer_error = offer, None
        except OfferMismatchError as exc:
            node.offer, node.offer_error = None, f"refused: {exc}"
            logger.warning("%s: %s", node.url, node.offer_error)
        except TimeoutError:
            node.offer_error = f"offer unavailable: not sent within {_OFFER_DEADLINE_S:g} s"
            logger.info("%s: %s", node.url, node.offer_error)
        except (httpx.HTTPError, ValidationError, InvalidJSONError) as exc:
            node.offer_error = f"offer unavailable: {exc}"
            logger.info("%s: %s", node.url, node.offer_error)

    def start(self, retry_s: float = 2.0) -> None:
        """Refresh now, then every ``refresh_s`` seconds (nodes without an offer yet
        every ``retry_s``), until :meth:`stop`."""
        self._refresher.start(retry_s)

    async def stop(self) -> None:
        await self._refresher.stop()
