"""The gateway's typed payer of one node: per request a :class:`~agoranet.payments.
httpx_auth.PaidRequest` whose :class:`~agoranet.payments.pay.httpx_auth.Payment` carries the
verified :class:`~agoranet.payments.receipts.Receipt`, and a channel deposit kept ahead of
the vouchers by a top-up on a task of its own.

The top-up is an on-chain transaction (seconds; up to the chain's timeout), so it never
runs in a request's auth flow nor on the event loop's thread: once what the channel has
left after the vouchers signed so far falls under a few requests' worth
(``LOW_WATER_REQUESTS`` requests of the size just asked for), a task tops it up with the
gateway's deposit while requests go on. A request whose voucher the deposit cannot cover
waits for that task (an asyncio event): before it holds the channel if it can tell then,
else in its auth flow with the channel held (:attr:`~agoranet.payments.pay.httpx_auth.
PayerAuth.cover`, checked just before the voucher is signed, when what is owed is known
exactly). The transaction runs on a worker thread; the channel's state is credited back
on the event loop's thread, where the payer's other state changes happen.
"""

from __future__ import annotations

import asyncio
import logging

from agoranet.errors import CannotPayError
from agoranet.payments.channels import open_channel
from agoranet.payments.pay.httpx_auth import PaidRequest, PayerAuth, Payment
from agoranet.payments.pay.payer import Payer

__all__ = ["LOW_WATER_REQUESTS", "NodePayer"]

logger = logging.getLogger(__name__)

# A top-up starts once the channel has room for fewer than this many requests like the last.
LOW_WATER_REQUESTS = 4


class NodePayer:
    """Pays one node over one channel for the gateway (see the module's docstring)."""

    def __init__(self, auth: PayerAuth, top_up: int) -> None:
        self.auth = auth
        self.top_up_amount = top_up
        self._task: asyncio.Task[CannotPayError | None] | None = None
        auth.cover = self._covered

    @property
    def payer(self) -> Payer:
        return self.auth.payer

    async def paid(self, max_amount: int) -> PaidRequest:
        """The auth for one request of at most ``max_amount``: its deposit is there first
        (waiting for a top-up if it must), and one is started ahead of need."""
        await self._cover(max_amount)
        return self.auth.paying(Payment(max_amount))

    def room(self, max_amount: int, *, exact: bool = False) -> int | None:
        """What the deposit leaves after one more voucher for ``max_amount`` (negative:
        short); None if this payer does not top up. The next voucher is what is owed plus
        ``max_amount``; unless ``exact`` (the channel held, nothing in flight), what is owed
        is bounded by the highest voucher signed, which a request in flight may claim."""
        state = self.payer.state
        if state is None or self.top_up_amount <= 0 or self.payer.account is None:
            return None
        owed = state.charged if exact else max(state.voucher, state.charged)
        return state.deposited - owed - max_amount

    async def _cover(self, max_amount: int) -> None:
        """Before a request: a top-up ahead of need, and a wait for one if it is short."""
        room = self.room(max_amount)
        if room is not None and room < max_amount * (LOW_WATER_REQUESTS - 1):
            self._start(max(self.top_up_amount, -room))
        await self._wait(max_amount, exact=False)

    async def _covered(self, max_amount: int) -> None:
        """In the auth flow, the channel held, just before the voucher is signed."""
        await self._wait(max_amount, exact=True)

    async def _wait(self, max_amount: int, *, exact: bool) -> None:
        while (room := self.room(max_amount, exact=exact)) is not None and room < 0:
            task = self._task or self._start(max(self.top_up_amount, -room))
            # shielded: a request that gives up waiting does not stop the deposit
            failure = await asyncio.shield(task)
            if failure is not None:  # told to every request that waited for it
                raise failure

    def _start(self, amount: int) -> asyncio.Task[CannotPayError | None]:
        """Top up by ``amount`` on a task, unless one is under way (that one, then)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._top_up(amount))
        return self._task

    async def _top_up(self, amount: int) -> CannotPayError | None:
        """The top-up; why it failed, if it did (it raises nothing)."""
        payer = self.payer
        try:
            assert payer.account is not None
            await asyncio.to_thread(open_channel, payer.w3, payer.addresses, payer.account,
                                    payer.config, amount)
            payer.credit(amount)  # on the loop's thread, as the payer's other changes
        except Exception as exc:  # a ChainError, or a store's
            logger.warning("top-up of the channel to %s failed: %s", payer.root, exc)
            return CannotPayError(f"the channel could not be topped up: {exc}")
        finally:
            self._task = None
        return None

    async def aclose(self) -> None:
        """Wait for a top-up under way (its deposit is on chain either way)."""
        task = self._task
        if task is not None:
            await asyncio.wait({task})
