"""The gateway's node directory: re-registration without a gap, public adapters listed.

Unit tests of :class:`~agoranet.gateway.directory.NodeDirectory`'s logic over an
in-memory node (httpx's mock transport) and a registry callable.

- A node whose registry entry changes (re-registered after a dev chain restart)
  keeps serving under the offer checked before, until the fetch that re-checks it
  ends: before, the directory dropped the offer first, and a request in that
  window found "no node on the network serves" the model (seen in the newcomer
  walkthrough). A changed offer that does not match the new entry is still refused.
- The public adapters a node's ``/v1/models`` lists appear in the gateway's model
  list with their base model, node and price; listings of models the node's offer
  takes no adapters for, and lists that cannot be read, add nothing.
"""

from __future__ import annotations

import httpx
from eth_account import Account

from agoranet.engines.base import ModelInfo
from agoranet.gateway.adapter_listing import adapter_entries
from agoranet.gateway.directory import NodeDirectory
from agoranet.registry.offer import AdapterTerms, Offer, Price, build_offer
from agoranet.registry.onchain import RegistryEntry, offer_hash
from agoranet.registry.signing import sign_offer

URL = "http://node.test/v1"
ACCOUNT = Account.create()
ADAPTER = "tiny@adapter:" + "ab" * 32


def _offer(price_in: int = 100, adapters: bool = True) -> Offer:
    terms = AdapterTerms(accepted=adapters, surcharge=Price(input_per_million=5,
                                                            output_per_million=7))
    return sign_offer(build_offer("transformers", [ModelInfo("tiny", 256)], price_in, 300,
                                  terms), ACCOUNT)


def _entry(offer: Offer, when: int) -> RegistryEntry:
    return RegistryEntry(ACCOUNT.address, URL, offer_hash(offer), when)


class _Node:
    """A node's offer and model list, answering the directory's fetches."""

    def __init__(self, offer: Offer) -> None:
        self.offer = offer
        self.models: list[str] | None = ["tiny", ADAPTER, "other@adapter:" + "cd" * 32]
        self.during_fetch: list[bool] = []  # the directory still had an offer
        self.directory: NodeDirectory | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/agoranet":
            if self.directory is not None and URL in self.directory.nodes:
                self.during_fetch.append(self.directory.nodes[URL].offer is not None)
            return httpx.Response(200, content=self.offer.model_dump_json())
        if request.url.path == "/v1/models" and self.models is not None:
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": m, "object": "model"} for m in self.models]})
        return httpx.Response(503)


async def test_a_reregistered_node_serves_while_it_is_checked_again() -> None:
    node = _Node(_offer())
    entries = [_entry(node.offer, 1)]
    async with httpx.AsyncClient(transport=httpx.MockTransport(node.handle)) as client:
        directory = NodeDirectory([], client, registry=lambda: list(entries))
        node.directory = directory
        await directory.refresh()
        assert directory.nodes[URL].offer == node.offer
        entries[0] = _entry(node.offer, 2)  # the same offer, registered again
        await directory.refresh()
        assert node.during_fetch[-1], "the offer was dropped before it was checked again"
        assert directory.nodes[URL].offer == node.offer
        assert directory.nodes[URL].registered == entries[0]
        # An offer the new entry does not match is refused, as before.
        node.offer = _offer(price_in=999)
        entries[0] = _entry(_offer(price_in=5), 3)
        await directory.refresh()
        assert directory.nodes[URL].offer is None
        assert "refused" in (directory.nodes[URL].offer_error or "")


async def test_public_adapters_are_listed_with_their_base_and_price() -> None:
    node = _Node(_offer())
    async with httpx.AsyncClient(transport=httpx.MockTransport(node.handle)) as client:
        directory = NodeDirectory([URL], client)
        await directory.refresh()
        [entry] = adapter_entries(directory.nodes.values())
        assert entry["id"] == ADAPTER and entry["owned_by"] == URL
        assert entry["agoranet"]["base_model"] == "tiny"
        assert entry["agoranet"]["cheapest_price"] == {"input_per_million": 105,
                                                       "output_per_million": 307}
        node.models = None  # an unreadable list keeps what was listed
        await directory.refresh()
        assert [e["id"] for e in adapter_entries(directory.nodes.values())] == [ADAPTER]
        node.models = ["tiny"]  # made private again: gone at the next refresh
        await directory.refresh()
        assert adapter_entries(directory.nodes.values()) == []
    closed = _Node(_offer(adapters=False))
    async with httpx.AsyncClient(transport=httpx.MockTransport(closed.handle)) as client:
        directory = NodeDirectory([URL], client)
        await directory.refresh()
        assert adapter_entries(directory.nodes.values()) == []
