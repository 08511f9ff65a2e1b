"""A fake node the fuzzer controls: a valid offer, then whatever answer it is told to give.

It runs in a thread of the fuzzing process (uvicorn on a free port), so the fuzzer sets
the next answer (:class:`~fuzz.strategies.NodeScenario`) before each request it sends
the gateway in front of it; requests are sent one at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from eth_account.signers.local import LocalAccount
from starlette.types import Receive, Scope, Send

from agoranet.chain.addresses import ChainAddresses
from agoranet.node.launcher import free_port
from agoranet.registry.offer import ModelOffer, Offer, PaymentOffer, Price
from agoranet.registry.signing import sign_offer

from .strategies import NodeScenario, good_completion_scenario, good_scenario

__all__ = ["OFFER", "GarbageNode", "garbage_node", "paid_offer"]

OFFER = Offer(engine="fake", models=[ModelOffer(
    id="tiny", context_length=2048, price=Price(input_per_million=0, output_per_million=0))])


def paid_offer(account: LocalAccount, addresses: ChainAddresses, chain_id: int) -> Offer:
    """:data:`OFFER` for pay (1 base unit a token) on the dev chain, paid to ``account``
    and signed by it, as a real paid node's offer is."""
    payment = PaymentOffer(
        schemes=["batch-settlement"], network=f"eip155:{chain_id}",
        asset=addresses.require_stablecoin(), pay_to=account.address,
        receiver_authorizer=account.address, withdraw_delay=900, min_deposit=0,
        token_name=addresses.token_name or "USD Coin", token_version=addresses.token_version or "2")
    price = Price(input_per_million=1_000_000, output_per_million=1_000_000)
    offer = OFFER.model_copy(update={
        "payment": payment, "models": [OFFER.models[0].model_copy(update={"price": price})]})
    return sign_offer(offer, account)


class GarbageNode:
    """An ASGI app: ``/.well-known/agoranet`` and ``/health`` answer well, the chat route
    answers ``scenario``, legacy completions a well-formed stream; ``served`` counts chat
    requests."""

    def __init__(self, offer: Offer = OFFER) -> None:
        self.offer = offer.model_dump_json().encode()
        self.scenario = good_scenario()
        self.served = 0
        self.url = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        path = scope["path"]
        if path.endswith("/chat/completions"):
            self.served += 1
            await self._answer(send, self.scenario)
        elif path.endswith("/completions"):  # legacy completions: always well-formed
            await self._answer(send, good_completion_scenario())
        elif path == "/.well-known/agoranet":
            await self._answer(send, NodeScenario(200, {}, self.offer, "application/json"))
        else:
            await self._answer(send, NodeScenario(200, {}, b'{"status":"ok"}',
                                                  "application/json"))

    @staticmethod
    async def _answer(send: Send, scenario: NodeScenario) -> None:
        headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in scenario.headers.items()]
        if scenario.content_type:
            headers.append((b"content-type", scenario.content_type.encode()))
        await send({"type": "http.response.start", "status": scenario.status,
                    "headers": headers})
        # in pieces, as a node streams
        body = scenario.body
        step = max(1, len(body) // 3)
        for start in range(0, len(body), step):
            await send({"type": "http.response.body", "body": body[start:start + step],
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextmanager
def garbage_node(offer: Offer = OFFER) -> Iterator[GarbageNode]:
    """A :class:`GarbageNode` served on 127.0.0.1 from a thread, until the block ends
    (with a signed offer that asks for payment, a gateway with a wallet pays it)."""
    node = GarbageNode(offer)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(node, host="127.0.0.1", port=port,
                                           log_level="critical", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the fake node did not start"
        time.sleep(0.02)
    node.url = f"http://127.0.0.1:{port}"
    try:
        yield node
    finally:
        server.should_exit = True
        thread.join(timeout=10)
