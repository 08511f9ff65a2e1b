"""A paid node (in process, fake engine, real dev chain) and the buyers' request ids.

Two buyers on two channels that chose the same ``x-request-id``: the second is answered
409 ``request_id_in_use`` (choose another id) before any inference, holding nothing and
learning nothing of the first buyer's request; the first buyer's request is served and
charged as its own; the second buyer's channel is free at once. A request id that is not
1 to 200 letters, digits or ``._:-`` is a 400 in OpenAI's error JSON before any payment
is looked at.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from agoranet.engines.base import Prepared, StreamEvent
from agoranet.payments import x402wire
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.payments.wallet import fund_dev

from .conftest import Env
from .paid_support import (
    BODY,
    WORST,
    Channel,
    CountingEngine,
    InProcessNode,
    asgi_client,
    header,
    in_process_node,
    open_test_channel,
)
from .support import channel_state, needs_anvil

pytestmark = needs_anvil

ALLOWANCE = 20_000  # each buyer's per-request maximum (above the worst case 13000)
DEPOSIT = 1_000_000


class GatedEngine(CountingEngine):
    """The fake engine; the next request to start waits for ``gate`` (set by a test) and
    says it started on ``started``, so a second request can arrive while it is held."""

    gate: asyncio.Event | None = None
    started: asyncio.Event | None = None

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        inner = super().stream(prepared)
        gate, started = self.gate, self.started
        self.gate = self.started = None  # only the first request waits

        async def gated() -> AsyncIterator[StreamEvent]:
            if started is not None:
                started.set()
            if gate is not None:
                await gate.wait()
            async for event in inner:
                yield event

        return gated()


Node = InProcessNode[GatedEngine]


@pytest.fixture(scope="module")
def node(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    engine = GatedEngine(delay=0.0, max_active=8, max_queue=64)
    with in_process_node(env, tmp_path_factory.mktemp("ledger"), engine) as started:
        yield started


@pytest.fixture
async def client(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(node.app) as c:
        yield c


def buyer_channel(env: Env, node: Node) -> Channel:
    """A new buyer (its own funded key) with a channel of its own to the node."""
    account: LocalAccount = Account.create()
    fund_dev(env.w3, env.addresses, account.address, stablecoin=10 * DEPOSIT, native=10**18)
    return open_test_channel(env, account, node.address, DEPOSIT)


async def post(client: httpx.AsyncClient, node: Node, channel: Channel, voucher: int,
               request_id: str) -> httpx.Response:
    pay = header(channel, voucher, ALLOWANCE, node.address, node.asset)
    return await client.post("/v1/chat/completions", json=BODY, headers={
        x402wire.PAYMENT_SIGNATURE: pay, "x-request-id": request_id})


def receipt_of(response: httpx.Response) -> Receipt:
    settle = x402wire.decode_json(response.headers[x402wire.PAYMENT_RESPONSE], "x")
    return Receipt.from_json(settle["extra"]["receipt"])


def assert_refused_in_use(response: httpx.Response, hidden: Channel) -> None:
    """409 ``request_id_in_use`` in OpenAI's error JSON, telling nothing of ``hidden``."""
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "request_id_in_use"
    assert "choose another request id" in error["message"]
    assert x402wire.PAYMENT_RESPONSE not in response.headers
    seen = response.text + response.headers.get(x402wire.PAYMENT_REQUIRED, "")
    assert hidden.channel_id.lower() not in seen.lower() and "receipt" not in seen


def assert_idle(node: Node, channel: Channel) -> None:
    """Nothing held, charged or voucher-backed on ``channel``: its next request is served."""
    record = node.payments.ledger.channel(channel.channel_id)
    assert record is None or (record.pending_request, record.charged,
                              record.voucher_amount) == (None, 0, 0)
    assert node.payments.ledger.receipts(channel.channel_id) == []


async def assert_claims_match_receipts(node: Node, env: Env,
                                       held: dict[str, list[Receipt]]) -> None:
    """Settled on chain: each channel claimed exactly what its own buyer holds receipts for
    (claimed <= receipted), and the node's books agree per channel."""
    await asyncio.to_thread(node.payments.settler.tick, force=True)
    for channel_id, receipts in held.items():
        assert all(r.channel_id == channel_id.lower() for r in receipts)
        receipted = sum(r.amount for r in receipts)
        _, claimed = channel_state(env.w3, env.addresses, channel_id)
        assert claimed == receipted
        assert sorted(node.payments.ledger.receipts(channel_id), key=lambda r: r.request_id) \
            == sorted(receipts, key=lambda r: r.request_id)


async def test_a_request_id_in_use_on_another_channel_is_refused_while_it_runs(
        client: httpx.AsyncClient, node: Node, env: Env) -> None:
    first, second = buyer_channel(env, node), buyer_channel(env, node)
    gate, started = asyncio.Event(), asyncio.Event()
    node.engine.gate, node.engine.started = gate, started
    running = asyncio.create_task(post(client, node, first, ALLOWANCE, "shared-id"))
    try:
        await asyncio.wait_for(started.wait(), 30)  # the first buyer's voucher is held
        calls = node.engine.calls
        refused = await post(client, node, second, ALLOWANCE, "shared-id")
        assert_refused_in_use(refused, first)
        assert node.engine.calls == calls  # refused before any inference
        assert_idle(node, second)
        held = node.payments.ledger.channel(first.channel_id)
        assert held is not None and held.pending_request == "shared-id"
    finally:
        gate.set()
        served = await asyncio.wait_for(running, 30)
    assert served.status_code == 200, served.text
    mine = receipt_of(served)
    verify_receipt(mine, node.address)
    assert (mine.request_id, mine.channel_id, mine.amount, mine.cumulative) == \
        ("shared-id", first.channel_id.lower(), WORST, WORST)
    # the second buyer picks another id and is served at once (its channel was not left busy)
    again = await post(client, node, second, ALLOWANCE, "second-own-id")
    assert again.status_code == 200, again.text
    theirs = receipt_of(again)
    assert (theirs.channel_id, theirs.amount) == (second.channel_id.lower(), WORST)
    await assert_claims_match_receipts(node, env, {first.channel_id: [mine],
                                                   second.channel_id: [theirs]})


async def test_a_request_id_charged_on_another_channel_is_refused_not_answered(
        client: httpx.AsyncClient, node: Node, env: Env) -> None:
    first, second = buyer_channel(env, node), buyer_channel(env, node)
    served = await post(client, node, first, ALLOWANCE, "done-id")
    assert served.status_code == 200, served.text
    calls = node.engine.calls
    refused = await post(client, node, second, ALLOWANCE, "done-id")
    assert_refused_in_use(refused, first)  # not "already charged", nor the first's receipt
    assert node.engine.calls == calls
    assert_idle(node, second)
    await assert_claims_match_receipts(node, env, {first.channel_id: [receipt_of(served)],
                                                   second.channel_id: []})


@pytest.mark.parametrize("bad", ["has space", "a" * 201, "", "semi;colon", "ünïcode", "a/b"])
async def test_a_bad_request_id_is_a_400_before_any_payment(
        client: httpx.AsyncClient, node: Node, env: Env, bad: str) -> None:
    channel = buyer_channel(env, node)
    calls = node.engine.calls
    response = await client.post("/v1/chat/completions", json=BODY, headers={
        x402wire.PAYMENT_SIGNATURE: header(channel, ALLOWANCE, ALLOWANCE, node.address,
                                           node.asset),
        "x-request-id": bad.encode()})  # as the client sends it: bytes
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "request_id")
    assert "1 to 200 letters, digits or '._:-'" in error["message"]
    assert x402wire.PAYMENT_REQUIRED not in response.headers
    assert node.engine.calls == calls
    assert node.payments.ledger.channel(channel.channel_id) is None  # the voucher unseen
    # the same voucher with a good id (200 characters: the longest) is served
    longest = ("Z_0.9:-" + channel.channel_id[2:]) * 3  # 219 characters, one per channel
    longest = longest[:200]
    served = await post(client, node, channel, ALLOWANCE, longest)
    assert served.status_code == 200, served.text
    assert receipt_of(served).request_id == longest
    await assert_claims_match_receipts(node, env, {channel.channel_id: [receipt_of(served)]})
