"""The gateway's node payer keeps the channel's deposit ahead of its vouchers: the on-chain
top-up runs on a task (its transaction on a worker thread, never in a request's auth flow
nor on the event loop's thread), starts ahead of need, and a request the deposit cannot
cover waits for it on an event; a failed top-up is told to the requests waiting for it.
And an event-loop task waiting for a busy channel is woken by its release (no polling).
The payer here is a stand-in (its chain transaction is the test's); the real top-up on a
dev chain is in tests/integration/test_gateway_paid.py."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.errors import CannotPayError, ChainError, PaymentError
from agoranet.gateway import node_payer
from agoranet.gateway.node_payer import NodePayer
from agoranet.payments.pay.httpx_auth import PayerAuth
from agoranet.payments.pay.payer_store import ChannelState, PayerStore

pytestmark = pytest.mark.timeout(20)


class StandIn:
    """The parts of a Payer the node payer uses; its state saved in a real store."""

    def __init__(self, tmp_path: Path, deposited: int, voucher: int = 0) -> None:
        self.state = ChannelState("0x" + "ab" * 32, {}, deposited=deposited, voucher=voucher,
                                  charged=voucher)
        self.store = PayerStore(tmp_path)
        self.account, self.w3, self.addresses, self.config = object(), None, None, None
        self.root, self.max_per_request = "http://node", None
        self.credited: list[tuple[int, str]] = []

    def pay(self, max_amount: int, request_id: str | None = None) -> Any:
        """Notes the deposit a voucher was signed against; the request goes no further."""
        self.paid_at = self.state.deposited
        raise PaymentError("the stand-in signs no voucher")

    def credit(self, deposit: int) -> None:
        self.credited.append((deposit, threading.current_thread().name))
        self.state.deposited += deposit
        self.store.save(self.state)


class Chain:
    """The top-up's transaction: noted with its thread, held until ``mined`` is set."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, str]] = []
        self.mined = threading.Event()
        self.fail = fail

    def __call__(self, w3: Any, addresses: Any, account: Any, config: Any, amount: int) -> None:
        self.calls.append((amount, threading.current_thread().name))
        assert self.mined.wait(10)
        if self.fail:
            raise ChainError("the deposit was not mined")


def paying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: Chain, deposited: int,
           voucher: int = 0, top_up: int = 1000) -> tuple[NodePayer, StandIn]:
    payer = StandIn(tmp_path, deposited, voucher)
    monkeypatch.setattr(node_payer, "open_channel", chain)
    return NodePayer(PayerAuth(payer), top_up), payer  # type: ignore[arg-type]


async def test_a_request_the_deposit_cannot_cover_waits_for_a_top_up_on_a_worker_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain()
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=100, voucher=90)
    ticks = 0

    async def loop_runs() -> None:  # the event loop is free while the deposit is mined
        nonlocal ticks
        while not chain.mined.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    request = asyncio.ensure_future(payer.paid(50))
    ticking = asyncio.ensure_future(loop_runs())
    await asyncio.sleep(0.1)
    assert not request.done()  # it waits for the deposit, holding nothing
    assert payer.auth._lock.acquire(blocking=False)  # the channel is not held meanwhile
    payer.auth._lock.release()
    chain.mined.set()
    paid = await request
    await ticking
    assert ticks > 5
    assert paid.payment.max_amount == 50 and paid.payment.receipt is None
    [(amount, thread)] = chain.calls
    assert amount == 1000 and thread != threading.current_thread().name
    # credited on the loop's thread, where the payer's other state changes happen
    assert state.credited == [(1000, threading.current_thread().name)]
    assert state.state.deposited == 1100
    assert state.store.load()["deposited"] == 1100  # saved


async def test_a_top_up_starts_ahead_of_need_and_requests_go_on_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain()
    # 1000 left: room for this request and fewer than 3 more like it
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=1000, voucher=0)
    first = await payer.paid(300)  # not kept waiting
    assert first.payment.max_amount == 300
    for _ in range(100):
        if chain.calls:
            break
        await asyncio.sleep(0.01)
    assert chain.calls[0][0] == 1000  # started before any request needed it
    assert (await payer.paid(300)).payment.max_amount == 300  # still not kept waiting
    assert len(chain.calls) == 1  # one top-up at a time
    chain.mined.set()
    await payer.aclose()
    assert state.state.deposited == 2000


async def test_plenty_of_room_starts_no_top_up(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain()
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=10_000, voucher=100)
    await payer.paid(100)
    await asyncio.sleep(0.05)
    assert chain.calls == [] and state.state.deposited == 10_000


async def test_a_failed_top_up_is_told_to_the_request_waiting_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain(fail=True)
    chain.mined.set()
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=100, voucher=90)
    with pytest.raises(CannotPayError, match="could not be topped up: the deposit was not"):
        await payer.paid(50)
    assert state.state.deposited == 100 and state.credited == []


async def test_a_payer_without_a_top_up_leaves_it_to_the_payer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain()
    payer, _ = paying(tmp_path, monkeypatch, chain, deposited=100, voucher=90, top_up=0)
    assert payer.room(50) is None
    await payer.paid(50)  # the payer's own refusal comes when it pays
    assert chain.calls == []


async def test_a_task_waiting_for_a_busy_channel_is_woken_by_its_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payer, _ = paying(tmp_path, monkeypatch, Chain(), deposited=10_000)
    lock = payer.auth._lock
    assert lock.acquire()
    released = 0.0
    got: list[float] = []

    async def wait() -> None:
        await lock.acquire_async()
        got.append(time.perf_counter())

    waiters = [asyncio.ensure_future(wait()) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert got == []

    def release() -> None:  # from another thread, as a sync client would
        nonlocal released
        released = time.perf_counter()
        lock.release()

    await asyncio.to_thread(release)
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    assert len(got) == 1  # one at a time: the other waits on
    lock.release()
    await asyncio.wait(waiters)
    assert len(got) == 2
    lock.release()
    assert lock.acquire(blocking=False)
    lock.release()


async def test_a_voucher_the_deposit_no_longer_covers_waits_in_the_flow_for_the_top_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Covered when handed out, short by the time it holds the channel (a request before it
    was charged meanwhile): the flow awaits the top-up before the voucher is signed."""
    chain = Chain()
    payer, state = paying(tmp_path, monkeypatch, chain, deposited=10_000)
    paid = await payer.paid(50)
    state.state.charged = state.state.voucher = 9_990  # charged while it waited its turn
    sent: list[httpx.Request] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(
            lambda request: sent.append(request) or httpx.Response(200))) as client:
        posting = asyncio.ensure_future(client.post("http://node/v1/chat/completions",
                                                    json={"model": "m"}, auth=paid))
        await asyncio.sleep(0.1)
        assert not posting.done() and not hasattr(state, "paid_at")  # no voucher yet
        chain.mined.set()
        with pytest.raises(PaymentError, match="signs no voucher"):
            await posting
    assert state.paid_at == 11_000 and sent == []  # signed against the topped-up deposit
    assert payer.auth._lock.acquire(blocking=False)  # let go


def test_a_waiter_whose_loop_is_closed_does_not_break_a_release(tmp_path: Path) -> None:
    lock = PayerAuth(StandIn(tmp_path, 0))._lock  # type: ignore[arg-type]
    assert lock.acquire()
    loop = asyncio.new_event_loop()
    waiting = loop.create_task(lock.acquire_async())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert not waiting.done()
    loop.close()  # with its waiter never woken
    lock.release()
    assert lock.acquire(blocking=False)
    lock.release()
