"""The node payer's money rules, exactly (``agoranet.gateway.node_payer``): when a top-up
starts ahead of need (fewer than ``LOW_WATER_REQUESTS`` requests like this one left: at
exactly that many, none), how much it deposits (the gateway's top-up, or the shortfall when
that is more), what a request counts as owed (before the channel is held: the highest
voucher signed, which a request in flight may claim; in the flow, the channel held: what
was charged), a request that fits to the unit is not kept waiting, the transaction goes to
the payer's own chain, contracts, account and channel terms, and a failed or finished
top-up leaves the payer able to top up again (a failure is logged with the node and why).
The payer is a stand-in whose state is saved in a real store, as in test_node_payer.py."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.errors import CannotPayError, ChainError, PaymentError
from agoranet.gateway import node_payer
from agoranet.gateway.node_payer import LOW_WATER_REQUESTS, NodePayer
from agoranet.payments.pay.httpx_auth import PayerAuth
from agoranet.payments.pay.payer_store import ChannelState, PayerStore

pytestmark = pytest.mark.timeout(20)

W3, ADDRESSES, ACCOUNT, CONFIG = object(), object(), object(), object()


class StandIn:
    """The parts of a Payer the node payer uses; its chain parts are distinct sentinels."""

    def __init__(self, tmp_path: Path, deposited: int, voucher: int, charged: int) -> None:
        self.state = ChannelState("0x" + "ab" * 32, {}, deposited=deposited, voucher=voucher,
                                  charged=charged)
        self.store = PayerStore(tmp_path)
        self.w3, self.addresses, self.account, self.config = W3, ADDRESSES, ACCOUNT, CONFIG
        self.root, self.max_per_request = "http://node", None

    def pay(self, max_amount: int, request_id: str | None = None) -> Any:
        """Notes the deposit a voucher was signed against; the request goes no further."""
        self.paid_at = self.state.deposited
        raise PaymentError("the stand-in signs no voucher")

    def credit(self, deposit: int) -> None:
        self.state.deposited += deposit
        self.store.save(self.state)


class Chain:
    """The top-up's transaction: its arguments noted; failing the first ``failures``."""

    def __init__(self, *, mined: bool = True, failures: int = 0) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.mined = threading.Event()
        if mined:
            self.mined.set()
        self.failures = failures

    def __call__(self, w3: Any, addresses: Any, account: Any, config: Any, amount: int) -> None:
        self.calls.append((w3, addresses, account, config, amount))
        assert self.mined.wait(10)
        if len(self.calls) <= self.failures:
            raise ChainError("the deposit was not mined")

    @property
    def amounts(self) -> list[int]:
        return [call[-1] for call in self.calls]


def paying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: Chain, *, deposited: int,
           voucher: int = 0, charged: int | None = None,
           top_up: int = 1000) -> tuple[NodePayer, StandIn]:
    payer = StandIn(tmp_path, deposited, voucher, voucher if charged is None else charged)
    monkeypatch.setattr(node_payer, "open_channel", chain)
    return NodePayer(PayerAuth(payer), top_up), payer  # type: ignore[arg-type]


async def _settled(payer: NodePayer) -> None:
    """Lets a top-up started ahead of need run to its end."""
    await asyncio.sleep(0.05)
    await payer.aclose()


async def test_a_top_up_starts_below_the_low_water_mark_not_at_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert LOW_WATER_REQUESTS == 4
    chain = Chain()
    # after this request, room for exactly 3 more like it: no top-up
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=1_200)
    assert payer.room(300) == 900
    await payer.paid(300)
    await _settled(payer)
    assert chain.calls == [] and state.state.deposited == 1_200
    # one unit less: a top-up of the gateway's amount starts ahead of need
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=1_199)
    await payer.paid(300)
    await _settled(payer)
    assert chain.amounts == [1_000] and state.state.deposited == 2_199


async def test_a_shortfall_larger_than_the_top_up_is_deposited_in_one_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain()
    # a top-up of one unit still tops up; the request is short by 4,990
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=100, voucher=90, top_up=1)
    assert payer.room(5_000) == -4_990
    paid = await payer.paid(5_000)
    assert paid.payment.max_amount == 5_000
    assert chain.amounts == [4_990] and state.state.deposited == 5_090
    assert state.store.load()["deposited"] == 5_090
    # the transaction is the payer's: its chain, contracts, account and channel terms
    assert chain.calls[0][:4] == (W3, ADDRESSES, ACCOUNT, CONFIG)


async def test_a_shortfall_found_in_the_flow_is_deposited_in_one_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain()
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=100_000)
    paid = await payer.paid(5_000)  # plenty of room then
    assert chain.calls == []
    state.state.charged = state.state.voucher = 99_000  # charged while it waited its turn
    async with httpx.AsyncClient(transport=httpx.MockTransport(
            lambda request: httpx.Response(200))) as client:
        with pytest.raises(PaymentError, match="signs no voucher"):
            await client.post("http://node/v1/chat/completions", json={"model": "m"},
                              auth=paid)
    assert chain.amounts == [4_000]  # short by 4,000: more than the top-up of 1,000
    assert state.paid_at == 104_000  # signed against the topped-up deposit


async def test_before_the_channel_is_held_a_voucher_in_flight_counts_as_owed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request in flight holds a voucher up to 9,990 though only 9,000 is charged yet: the
    next request counts the voucher (its node may claim all of it) and waits for a top-up."""
    chain = Chain(mined=False)
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=10_000, voucher=9_990,
                          charged=9_000)
    assert payer.room(50) == -40 and payer.room(50, exact=True) == 950
    request = asyncio.ensure_future(payer.paid(50))
    await asyncio.sleep(0.1)
    assert not request.done() and chain.amounts == [1_000]
    chain.mined.set()
    assert (await request).payment.max_amount == 50
    assert state.state.deposited == 11_000


async def test_in_the_flow_only_what_was_charged_counts_and_a_fitting_voucher_is_signed_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The channel held, nothing is in flight: the last voucher (9,990) was for more than the
    node charged (9,000), so the next one is charged + 50, which the deposit covers: signed
    without waiting for any top-up."""
    chain = Chain(mined=False)
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=10_000)
    paid = await payer.paid(50)
    state.state.voucher, state.state.charged = 9_990, 9_000
    async with httpx.AsyncClient(transport=httpx.MockTransport(
            lambda request: httpx.Response(200))) as client:
        posting = client.post("http://node/v1/chat/completions", json={"model": "m"},
                              auth=paid)
        with pytest.raises(PaymentError, match="signs no voucher"):
            await asyncio.wait_for(posting, 5)
    assert state.paid_at == 10_000 and chain.calls == []
    chain.mined.set()
    await payer.aclose()


async def test_a_request_that_fits_to_the_unit_is_not_kept_waiting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain(mined=False)
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=1_000, voucher=950)
    assert payer.room(50) == 0
    paid = await asyncio.wait_for(payer.paid(50), 5)  # the top-up ahead of need runs on
    assert paid.payment.max_amount == 50 and chain.amounts == [1_000]
    assert state.state.deposited == 1_000
    chain.mined.set()
    await payer.aclose()
    assert state.state.deposited == 2_000


async def test_a_failed_top_up_is_logged_and_the_next_request_tops_up_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    chain = Chain(failures=1)
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=100, voucher=90)
    with caplog.at_level(logging.WARNING, logger=node_payer.__name__), \
            pytest.raises(CannotPayError, match="could not be topped up"):
        await payer.paid(50)
    assert [r.getMessage() for r in caplog.records if r.name == node_payer.__name__] == [
        "top-up of the channel to http://node failed: the deposit was not mined"]
    assert state.state.deposited == 100
    # the next request is short too: a new top-up, and then another after that one
    assert (await payer.paid(50)).payment.max_amount == 50
    assert state.state.deposited == 1_100
    state.state.voucher = state.state.charged = 1_090
    assert (await payer.paid(50)).payment.max_amount == 50
    assert chain.amounts == [1_000, 1_000, 1_000] and state.state.deposited == 2_100
