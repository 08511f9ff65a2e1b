"""A seller's channels in the gateway: calls at once get channels of their own.

In process, no chain: :class:`ToolPayers` whose channel opening is replaced by a payer
over a channel state set by hand (one channel id per slot), optionally held open until
the test lets it finish. What is checked:

- a call takes an idle channel, else opens the next slot while the seller has fewer
  than ``channels`` (slot 0 in the seller's folder, slot N in ``HASH-N``), else waits;
  waiting calls are served first come, first served, each handed the channel given back;
- a call cancelled after being handed a channel gives it on (no channel is lost); one
  cancelled while its channel is being opened leaves that channel idle once opened;
- a channel that cannot be opened frees its slot and lets a waiting call try;
- a new offer reopens an idle channel in its own slot (the same channel, new terms);
- sellers do not share channels.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from test_tool_payer import ADDRESSES, _offer
from web3 import Web3

from agoranet.errors import PaymentError
from agoranet.gateway.budget import Budget
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.tool_directory import ToolSeller
from agoranet.gateway.tool_payer import ToolPayer, ToolPayers
from agoranet.payments.pay.payer_store import ChannelState

pytestmark = pytest.mark.timeout(30)


class Payers(ToolPayers):
    """Channels opened by hand: ``gate`` (if set) holds an opening until set; ``fail``
    makes the next opening fail."""

    def __init__(self, tmp_path: Path, channels: int) -> None:
        super().__init__("http://no-chain.test", Account.create(), tmp_path / "channels",
                         100_000, Budget(None), SpendLog(tmp_path / "spend.sqlite"),
                         channels=channels)
        self.gate: threading.Event | None = None
        self.fail = False
        self.opened: list[Path] = []

    def _new_payer(self, seller: ToolSeller, offer: Any, folder: Path) -> ToolPayer:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            self.fail = False
            raise PaymentError("the chain refused the deposit")
        payer = ToolPayer(offer, Web3(), ADDRESSES, account=self.account, state_dir=folder)
        channel = "0x" + hashlib.sha256(str(folder).encode()).hexdigest()
        payer.state = ChannelState(channel, {}, deposited=100_000, charged=0, voucher=0)
        self.opened.append(folder)
        return payer

    def _ready(self, payer: ToolPayer) -> None:
        pass


@pytest.fixture
def payers(tmp_path: Path) -> Any:
    made: list[Payers] = []

    def make(channels: int = 2) -> Payers:
        made.append(Payers(tmp_path, channels))
        return made[-1]
    yield make
    for p in made:
        p.close()
        p.spend.close()


def _seller(root: str = "http://seller.test") -> ToolSeller:
    return ToolSeller(root, _offer())


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _opening_and_waiting(p: Payers, seller: ToolSeller, *, fails: bool = False
                               ) -> tuple[asyncio.Future[Any], asyncio.Future[Any]]:
    """A call whose channel is being opened (held at ``p.gate``; the opening then fails if
    ``fails``), and a second call waiting for the one slot."""
    p.gate = threading.Event()
    p.fail = fails
    opening = asyncio.ensure_future(p.take(seller))
    await asyncio.sleep(0.05)
    waiting = asyncio.ensure_future(p.take(seller))
    await _settle()
    return opening, waiting


async def test_channels_opened_as_calls_need_them_then_waited_for(payers: Any) -> None:
    p: Payers = payers(2)
    seller = _seller()
    first = await p.take(seller)
    p.give_back(seller, first)
    assert await p.take(seller) is first and len(p.opened) == 1  # idle: reused
    second = await p.take(seller)  # the first is busy: a second channel
    name = hashlib.sha256(b"http://seller.test").hexdigest()[:16]
    assert [f.name for f in p.opened] == [name, f"{name}-1"]
    assert second.state is not None and first.state is not None
    assert second.state.channel_id != first.state.channel_id
    waiting = [asyncio.ensure_future(p.take(seller)) for _ in range(3)]
    await _settle()
    assert not any(w.done() for w in waiting) and len(p.opened) == 2  # at most two
    p.give_back(seller, second)
    p.give_back(seller, first)
    await _settle()
    assert [w.result() if w.done() else None for w in waiting] == [second, first, None]
    p.give_back(seller, second)
    assert await asyncio.wait_for(waiting[2], 5) is second  # first come, first served
    assert sorted(map(id, p.payers())) == sorted(map(id, [first, second]))


async def test_a_waiter_cancelled_after_it_was_handed_a_channel_passes_it_on(
        payers: Any) -> None:
    p: Payers = payers(1)
    seller = _seller()
    only = await p.take(seller)
    cancelled = asyncio.ensure_future(p.take(seller))
    after = asyncio.ensure_future(p.take(seller))
    await _settle()
    p.give_back(seller, only)  # handed to the first waiter ...
    cancelled.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await asyncio.wait_for(after, 5) is only
    p.give_back(seller, only)
    assert await p.take(seller) is only and len(p.opened) == 1


async def test_a_call_cancelled_while_its_channel_opens_leaves_it_idle(payers: Any) -> None:
    p: Payers = payers(1)
    seller = _seller()
    opening, waiting = await _opening_and_waiting(p, seller)  # the one slot is being opened
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert not waiting.done()
    p.gate.set()  # the channel finishes opening: kept, and handed to the waiting call
    payer = await asyncio.wait_for(waiting, 5)
    assert len(p.opened) == 1 and p.payers() == [payer]


async def test_a_channel_that_cannot_be_opened_frees_its_slot(payers: Any) -> None:
    p: Payers = payers(1)
    seller = _seller()
    failing, waiting = await _opening_and_waiting(p, seller, fails=True)
    p.gate.set()
    with pytest.raises(PaymentError, match="refused the deposit"):
        await failing
    payer = await asyncio.wait_for(waiting, 5)  # the freed slot: it opened its own
    assert p.payers() == [payer] and len(p.opened) == 1


async def test_a_new_offer_reopens_an_idle_channel_in_its_slot(payers: Any) -> None:
    p: Payers = payers(2)
    seller = _seller()
    first = await p.take(seller)
    second = await p.take(seller)
    p.give_back(seller, second)
    p.give_back(seller, first)
    seller.offer = _offer(min_deposit=5)  # new terms
    renewed = await p.take(seller)  # the most recently given back: slot 0
    assert renewed not in (first, second) and renewed.tool_offer == seller.offer
    assert renewed.state_dir == first.state_dir
    assert sorted(map(id, p.payers())) == sorted(map(id, [renewed, second]))


async def test_sellers_do_not_share_channels(payers: Any) -> None:
    p: Payers = payers(1)
    a, b = _seller("http://a.test"), _seller("http://b.test")
    one = await p.take(a)
    other = await asyncio.wait_for(p.take(b), 5)  # a's only channel is busy: b has its own
    assert one is not other and one.state_dir != other.state_dir
    with pytest.raises(ValueError, match="at least one channel"):
        ToolPayers("http://x", Account.create(), Path("/nonexistent"), 1, Budget(None),
                   p.spend, channels=0)
