"""One request at a time on a channel (``PayerAuth``'s channel lock): a voucher is signed
from the payer's state as the previous request's receipt left it, so a second request, from
a thread or an event loop, waits until the first one's answer is read; and the lock keeps
nothing of a request that is done -- no waiter left behind by a request that got the
channel, none by a request whose event loop was closed while it waited. The auth flow with a
payer double and a node answered by ``httpx.MockTransport`` (no chain needed)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

import httpx
import pytest

from agoranet.payments import x402wire
from agoranet.payments.pay.httpx_auth import PayerAuth
from agoranet.payments.pay.payer import Payer, PendingPayment

pytestmark = pytest.mark.timeout(30)

BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
MAX = 5_000
RECEIPT = {x402wire.PAYMENT_RESPONSE: x402wire.encode_json({"success": True, "extra": {}})}
WAIT_S = 1.0  # how long the first request holds the node, for a second one to overtake it


class _Payer:
    """Signs numbered vouchers and believes any receipt; records the order of both."""

    max_per_request = MAX

    def __init__(self) -> None:
        self.events: list[str] = []

    def pay(self, amount: int, request_id: str | None = None) -> PendingPayment:
        n = sum(e.startswith("sign") for e in self.events)
        self.events.append(f"sign {n}")
        return PendingPayment(request_id or f"r{n}", amount, amount, 0, f"voucher-{n}")

    def settle(self, pending: PendingPayment, response: dict[str, Any], model: str,
               **terms: Any) -> str:
        self.events.append(f"receipt {pending.header.removeprefix('voucher-')}")
        return "receipt"

    def reconcile(self) -> str | None:
        return None


def test_a_threads_request_waits_for_the_one_on_the_channel() -> None:
    """Two threads pay on one channel: the second request's voucher is signed only after
    the first one's receipt was checked, and the node never has both at once."""
    payer = _Payer()
    auth = PayerAuth(cast(Payer, payer))
    at_node, in_flight, most = threading.Event(), [0], [0]
    second_arrived = threading.Event()
    guard = threading.Lock()

    def answer(request: httpx.Request) -> httpx.Response:
        with guard:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            first = not at_node.is_set()
            at_node.set()
        if first:  # held at the node: a second request that did not wait gets here now
            second_arrived.wait(WAIT_S)
        else:
            second_arrived.set()
        with guard:
            in_flight[0] -= 1
        return httpx.Response(200, json={}, headers=RECEIPT)

    statuses: list[int] = []

    def ask() -> None:
        with httpx.Client(base_url="http://node", auth=auth,
                          transport=httpx.MockTransport(answer)) as http:
            statuses.append(http.post("/v1/chat/completions", json=BODY).status_code)

    first = threading.Thread(target=ask)
    first.start()
    assert at_node.wait(10)
    second = threading.Thread(target=ask)
    second.start()
    first.join(10)
    second.join(10)
    assert statuses == [200, 200]
    assert most == [1]  # one request at a time at the node
    assert payer.events == ["sign 0", "receipt 0", "sign 1", "receipt 1"]
    assert auth._lock.acquire(blocking=False)  # let go after both
    auth._lock.release()


async def test_requests_racing_on_a_loop_leave_no_waiter_behind() -> None:
    """Five requests of one event loop race for the channel: each signs after the
    previous receipt, and once all are answered the lock holds no waiter (a gateway's
    long-lived channel would otherwise keep one per request, each woken on every release)."""
    payer = _Payer()
    auth = PayerAuth(cast(Payer, payer))

    async def answer(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)  # let the others queue up on the channel
        return httpx.Response(200, json={}, headers=RECEIPT)

    async with httpx.AsyncClient(base_url="http://node", auth=auth,
                                 transport=httpx.MockTransport(answer)) as http:
        answers = await asyncio.gather(*(http.post("/v1/chat/completions", json=BODY)
                                         for _ in range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    assert payer.events == [e for n in range(5) for e in (f"sign {n}", f"receipt {n}")]
    assert auth._lock._waiters == []
    assert auth._lock.acquire(blocking=False)
    auth._lock.release()


def test_a_waiter_whose_loop_was_closed_is_dropped_by_the_next_release() -> None:
    """A request waiting for the channel on an event loop that is then closed (its task
    never resumed) cannot be woken: the release that finds its loop closed lets the
    channel go all the same and forgets that waiter."""
    auth = PayerAuth(cast(Payer, _Payer()))
    lock = auth._lock
    assert lock.acquire()  # a thread's request holds the channel
    loop = asyncio.new_event_loop()
    try:
        waiting = loop.create_task(lock.acquire_async())
        for _ in range(3):
            loop.run_until_complete(asyncio.sleep(0))  # the task registers and waits
        assert not waiting.done() and len(lock._waiters) == 1
    finally:
        loop.close()
    lock.release()  # its loop is closed: no wake-up can reach it
    assert lock._waiters == []
    assert lock.acquire(blocking=False)  # the channel is free
    lock.release()
    del waiting
