"""A seller's channels in the gateway, the cases test_tool_channels.py leaves open: a channel
is never paying two calls at once, a slot whose opening outlived its call is not lost to the
seller's count, and a channel reopened for a new offer stays in its own slot (its own
folder, its own channel id). In process, no chain: the channel opening of
test_tool_channels.py's ``Payers`` (a payer over a channel state set by hand per folder)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eth_account import Account
from test_tool_channels import Payers, _opening_and_waiting, _seller, _settle
from test_tool_payer import _offer

from agoranet.gateway.budget import Budget
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.tool_payer import ToolPayers

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def payers(tmp_path: Path) -> Iterator[Callable[[int], Payers]]:
    made: list[Payers] = []

    def make(channels: int) -> Payers:
        made.append(Payers(tmp_path, channels))
        return made[-1]
    yield make
    for p in made:
        p.close()
        p.spend.close()


async def test_a_channel_handed_to_a_waiting_call_is_not_also_idle(
        payers: Callable[[int], Payers]) -> None:
    """The one channel, given back while a call waits, goes to that call only: a call
    coming after waits for it too, instead of paying on the same channel at once (two
    vouchers from one cumulative state)."""
    p = payers(1)
    seller = _seller()
    only = await p.take(seller)
    waiting = asyncio.ensure_future(p.take(seller))
    await _settle()
    p.give_back(seller, only)
    assert await asyncio.wait_for(waiting, 5) is only
    later = asyncio.ensure_future(p.take(seller))
    await _settle()
    assert not later.done()  # the channel is paying the waiting call's call
    p.give_back(seller, only)
    assert await asyncio.wait_for(later, 5) is only
    assert p.payers() == [only] and len(p.opened) == 1


async def test_a_channel_opened_after_its_call_was_cancelled_keeps_its_slot(
        payers: Callable[[int], Payers]) -> None:
    """A call cancelled while its channel (slot 0) was being opened leaves the channel
    idle in slot 0 once opened; the seller then has one channel, so two calls at once get
    that one and a second, new one in slot 1 (neither waits)."""
    p = payers(2)
    seller = _seller()
    p.gate = threading.Event()
    opening = asyncio.ensure_future(p.take(seller))
    await asyncio.sleep(0.05)  # its channel is being opened (held at the gate)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    p.gate.set()
    for _ in range(100):  # the opening, on its thread, finishes after its call is gone
        if p.payers():
            break
        await asyncio.sleep(0.02)
    [late] = p.payers()
    first, second = await asyncio.wait_for(
        asyncio.gather(p.take(seller), p.take(seller)), 5)
    assert first is late and second is not late
    assert [f.name for f in p.opened] == [p.folder(seller).name, p.folder(seller, 1).name]
    assert sorted(map(id, p.payers())) == sorted(map(id, [first, second]))


async def test_a_failed_opening_after_its_call_was_cancelled_frees_the_slot(
        payers: Callable[[int], Payers]) -> None:
    """A call cancelled while its channel was being opened, and that opening then fails:
    the slot is free again, and the call waiting for the seller's one channel opens it."""
    p = payers(1)
    seller = _seller()
    opening, waiting = await _opening_and_waiting(p, seller, fails=True)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    p.gate.set()  # the opening fails ("the chain refused the deposit")
    payer = await asyncio.wait_for(waiting, 5)
    assert p.payers() == [payer] and [f.name for f in p.opened] == [p.folder(seller).name]


async def test_a_new_offer_reopens_the_second_channel_in_the_second_slot(
        payers: Callable[[int], Payers]) -> None:
    """The channel in slot 1, idle when the seller's offer changed, is reopened on the new
    terms in slot 1's folder: the same channel, not slot 0's (which another call may pay
    on)."""
    p = payers(2)
    seller = _seller()
    first = await p.take(seller)
    second = await p.take(seller)
    p.give_back(seller, first)
    p.give_back(seller, second)  # the most recently given back: slot 1
    seller.offer = _offer(min_deposit=5)  # new terms
    renewed = await p.take(seller)
    assert renewed.tool_offer == seller.offer and renewed not in (first, second)
    assert renewed.state_dir == second.state_dir == p.folder(seller, 1)
    assert renewed.state is not None and second.state is not None
    assert renewed.state.channel_id == second.state.channel_id
    assert first.state_dir == p.folder(seller)  # slot 0: the folder named by the URL
    other = await asyncio.wait_for(p.take(seller), 5)  # slot 0, idle, old terms: reopened
    assert other.state_dir == first.state_dir
    assert sorted(map(id, p.payers())) == sorted(map(id, [renewed, other]))


def test_a_seller_needs_at_least_one_channel(tmp_path: Path) -> None:
    spend = SpendLog(tmp_path / "spend.sqlite")
    try:
        with pytest.raises(ValueError, match=r"^a seller needs at least one channel$"):
            ToolPayers("http://no-chain.test", Account.create(), tmp_path / "channels", 1,
                       Budget(None), spend, channels=0)
    finally:
        spend.close()
