"""Public adapters in the gateway's ``/v1/models``, from the nodes' own listings.

A node's ``GET /v1/models`` names its base models and the adapters their owners
made public (``BASE@adapter:<id>``; private and unlisted ones never appear). The
gateway reads it with each node's offer (:class:`~agoranet.gateway.directory.
NodeDirectory`) and lists every public adapter once, with its base model, the
nodes that serve it (``owned_by`` names the first: its registered address, else its
URL) and its cheapest price (the base price plus the node's adapter surcharge).
A listing that cannot be read keeps the node's previous one: it is the node's
catalogue, not a failure, and never counts against the node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from agoranet.api import jsonlimits
from agoranet.errors import InvalidJSONError
from agoranet.gateway.nodes import NodeState
from agoranet.market import ModelName
from agoranet.registry.offer import Offer

__all__ = ["MAX_LISTING_BYTES", "adapter_entries", "fetch_public_adapters"]

logger = logging.getLogger(__name__)

MAX_LISTING_BYTES = 1024 * 1024
_DEADLINE_S = 10.0  # for the whole listing, however slowly it trickles


class _Card(BaseModel):
    id: str


class _Listing(BaseModel):
    data: list[_Card]


async def fetch_public_adapters(client: httpx.AsyncClient, url: str,
                                offer: Offer) -> tuple[str, ...] | None:
    """The public adapters a node at ``url`` (its ``/v1`` base) lists over a base model
    its ``offer`` takes adapters for; None when the listing cannot be read."""
    try:
        async with asyncio.timeout(_DEADLINE_S), \
                client.stream("GET", f"{url}/models", timeout=5.0) as response:
            response.raise_for_status()
            raw = await jsonlimits.read_limited(response, MAX_LISTING_BYTES,
                                                what="the model list")
        listing = _Listing.model_validate(jsonlimits.loads_object(raw, max_bytes=None))
    except (TimeoutError, httpx.HTTPError, ValidationError, InvalidJSONError) as exc:
        logger.info("%s: model list unavailable: %s", url, exc or "too slow")
        return None
    takes = {m.id for m in offer.models if m.adapters.accepted}
    return tuple(sorted(card.id for card in listing.data if ModelName.names_adapter(card.id)
                        and ModelName.base_of(card.id) in takes))


def adapter_entries(nodes: Iterable[NodeState]) -> list[dict[str, Any]]:
    """``/v1/models`` entries for the public adapters the nodes serve, by name."""
    seen: dict[str, dict[str, Any]] = {}
    for node in nodes:
        for name in node.public_adapters:
            model = node.model(name)
            if model is None:
                continue
            prices = model.price_book().per_token(adapter=True)
            price = {"input_per_million": prices.input_per_million,
                     "output_per_million": prices.output_per_million}
            entry = seen.setdefault(name, {
                "id": name, "object": "model", "created": 0, "owned_by": node.identity,
                "max_model_len": model.context_length,
                "agoranet": {"base_model": model.id, "adapter": True, "nodes": 0,
                             "cheapest_price": price},
            })
            entry["agoranet"]["nodes"] += 1
            if sum(price.values()) < sum(entry["agoranet"]["cheapest_price"].values()):
                entry["agoranet"]["cheapest_price"] = price
    return [seen[k] for k in sorted(seen)]
