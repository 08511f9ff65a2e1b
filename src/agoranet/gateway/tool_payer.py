"""Paying tool servers: the node payer's batch-settlement channel, priced per call.

A :class:`ToolPayer` is a :class:`~agoranet.payments.pay.payer.Payer` (one channel, the
voucher saved before it leaves, corrective 402s, disputes, reconciling with the chain)
whose terms come from a checked :class:`~agoranet.registry.tool_offer.ToolOffer`
instead of a node's offer, and whose receipts are checked against a tool's price per
call instead of token prices (:meth:`ToolPayer.check_call`): signed by the seller's
payee, for this request (the ``x-request-id`` sent), channel and chain, never above
the voucher, in step with
what was charged before, and exactly the price (a price that varies with the
arguments: at most its stated maximum). :class:`ToolPayers` keeps a seller's payers,
its disputes and resynced receipts counted in the budget and the spend log like a
node's; a dispute (a charged total no receipt backs) is also a ``dispute`` event in
the reputation store, which bans the seller for a week.

A channel pays one call at a time (a voucher's cumulative amount follows the receipt
of the call before), so calls to one seller at once go over several channels:
:meth:`ToolPayers.take` gives a call an idle channel of the seller, else opens another
(each with the deposit) while the seller has fewer than ``channels``, else waits for
the first one handed back (:meth:`ToolPayers.give_back`), in order of arrival. A
seller's first channel is kept in the folder named by its URL's hash, the others in
``HASH-1``, ``HASH-2``...; each is opened when calls first need it and reused after.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agoranet.errors import PaymentError, ReceiptError
from agoranet.gateway.budget import Budget
from agoranet.gateway.reputation import EventKind, Reputation
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.payments.pay.payer import Payer, PendingPayment
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.registry.offer import Offer
from agoranet.registry.tool_offer import ToolOffer

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3 as _Web3

    from agoranet.chain.addresses import ChainAddresses
    from agoranet.gateway.tool_directory import ToolSeller
    from agoranet.payments.pay.payer import Dispute

__all__ = ["ToolPayer", "ToolPayers"]


class ToolPayer(Payer):
    """Pays one tool server from one channel (see the module's docstring)."""

    def __init__(self, offer: ToolOffer, w3: _Web3, addresses: ChainAddresses, *,
                 account: LocalAccount, state_dir: Path, top_up: int = 0) -> None:
        self.tool_offer = offer
        super().__init__(offer.url, w3, addresses, account=account, state_dir=state_dir,
                         top_up=top_up)

    def _read_offer(self) -> Offer:
        """The checked tool offer's payment terms, as a node offer without models."""
        terms = self.tool_offer.payment
        if terms is None:
            raise PaymentError(f"the tool server at {self.root} does not sell for payment")
        if "batch-settlement" not in terms.schemes:
            raise PaymentError(f"the tool server at {self.root} takes no batch-settlement "
                               "payment")
        if terms.asset.lower() != self.addresses.require_stablecoin().lower():
            raise PaymentError(f"the tool server wants token {terms.asset}, not ours")
        return Offer(engine="tools", models=[], payment=terms)

    def check_call(self, pending: PendingPayment, response: dict[str, Any],
                   price: int) -> Receipt:
        """The verified receipt in the seller's payment response for ``pending``, a call
        priced ``price`` (the tool's fixed price, or the seller's quote for these
        arguments); not yet adopted (ReceiptError: the receipt is refused)."""
        assert self.state is not None
        try:
            receipt = Receipt.from_json(response["extra"]["receipt"])
            charged = int(response["extra"]["chargedAmount"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReceiptError(f"the tool server's payment response has no receipt: "
                               f"{exc}") from None
        try:
            verify_receipt(receipt, self.node)
        except ReceiptError:
            self._refuse(pending.request_id)
            raise
        # The seller names the call by the buyer's ``x-request-id`` (as a node does), and
        # the cumulative in step with what was charged before binds the receipt to this
        # call: another call's receipt, or an older one, never fits.
        problems = [
            (receipt.request_id != pending.request_id, "is for another request"),
            (receipt.channel_id != self.state.channel_id, "is for another channel"),
            (receipt.chain_id != self.chain_id, "is for another chain"),
            (receipt.amount != charged, "disagrees with chargedAmount"),
            (receipt.amount > pending.max_amount, "charges more than the voucher allowed"),
            (receipt.amount != price, f"charges {receipt.amount}, the call costs {price}"),
            (receipt.cumulative != pending.charged_before + receipt.amount,
             "has a cumulative out of step"),
        ]
        for bad, why in problems:
            if bad:
                self._refuse(pending.request_id)
                raise ReceiptError(f"receipt {receipt.request_id} {why}")
        return receipt


@dataclass
class _Channels:
    """One seller's payers by slot (its channel's folder): idle, or paying a call."""

    members: dict[int, ToolPayer] = field(default_factory=dict)
    idle: list[ToolPayer] = field(default_factory=list)
    opening: set[int] = field(default_factory=set)  # slots whose channel is being opened
    # calls waiting for a channel, first come first served: each is handed a channel given
    # back, or None when a slot is free again (it then looks for itself)
    waiters: collections.deque[asyncio.Future[ToolPayer | None]] = field(
        default_factory=collections.deque)

    def taken(self) -> int:
        return len(self.members) + len(self.opening)

    def free_slot(self) -> int:
        return min(set(range(self.taken() + 1)) - set(self.members) - self.opening)

    def slot_of(self, payer: ToolPayer) -> int:
        return next(slot for slot, member in self.members.items() if member is payer)

    def hand(self, payer: ToolPayer | None) -> bool:
        """Give ``payer`` (None: a free slot) to the longest waiting call, if any."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(payer)
                return True
        return False

    def give_back(self, payer: ToolPayer) -> None:
        if not self.hand(payer):
            self.idle.append(payer)


class ToolPayers:
    """A seller's :class:`ToolPayer` channels (keyed by root URL), at most ``channels``
    at once, opened as calls need them (see the module's docstring)."""

    def __init__(self, rpc_url: str, account: LocalAccount, state_root: Path, deposit: int,
                 budget: Budget, spend: SpendLog, *, chain_timeout_s: float = 10.0,
                 reputation: Reputation | None = None, channels: int = 4) -> None:
        if channels < 1:
            raise ValueError("a seller needs at least one channel")
        self.rpc_url = rpc_url
        self.account = account
        self.state_root = state_root
        self.deposit = deposit
        self.budget, self.spend = budget, spend
        self.chain_timeout_s = chain_timeout_s
        self.reputation = reputation
        self.channels = channels
        self._sellers: dict[str, _Channels] = {}
        self._stablecoin: str | None = None

    async def stablecoin(self) -> str:
        """Our chain's stablecoin (read once): the only token sellers are paid in."""
        if self._stablecoin is None:
            self._stablecoin = await asyncio.to_thread(self._read_stablecoin)
        return self._stablecoin

    def _read_stablecoin(self) -> str:
        from agoranet.chain.addresses import resolve_addresses
        from agoranet.chain.rpc import connect

        w3 = connect(self.rpc_url, timeout=self.chain_timeout_s, retry=False)
        return resolve_addresses(int(w3.eth.chain_id)).require_stablecoin()

    async def cancel_exact(self, nonce: str) -> bool:
        """Cancel the wallet's unused ``exact`` transfer ``nonce`` on chain: True if it was
        cancelled (nothing moved, nothing can), False if it was used (ChainError: the chain
        could not say)."""
        return await asyncio.to_thread(self._cancel_exact, nonce)

    def _cancel_exact(self, nonce: str) -> bool:
        from agoranet.chain.addresses import resolve_addresses
        from agoranet.chain.rpc import connect
        from agoranet.payments.pay.exact_cancel import cancel_authorization

        w3 = connect(self.rpc_url, timeout=self.chain_timeout_s, retry=False)
        return cancel_authorization(w3, resolve_addresses(int(w3.eth.chain_id)), self.account,
                                    nonce)

    async def take(self, seller: ToolSeller) -> ToolPayer:
        """A payer of ``seller`` (whose offer was checked) for one call, on a channel no
        other call uses until :meth:`give_back`: an idle one (on the offer's terms: one
        made for an older offer is reopened, same channel, new terms), else a new channel
        while the seller has fewer than ``channels``, else the first one handed back.
        AgoranetError if a channel cannot be opened (nothing is held then)."""
        assert seller.offer is not None
        pool = self._sellers.setdefault(seller.root, _Channels())
        while True:
            if pool.idle:
                payer: ToolPayer | None = pool.idle.pop()
            elif pool.taken() < self.channels:
                return await self._open_slot(pool, seller, seller.offer, pool.free_slot())
            else:
                payer = await self._wait(pool)
            if payer is None:
                continue  # a slot is free again
            if payer.tool_offer == seller.offer:
                return payer
            slot = pool.slot_of(payer)  # a new offer: the same channel, new terms
            del pool.members[slot]
            payer.close()
            return await self._open_slot(pool, seller, seller.offer, slot)

    @staticmethod
    async def _wait(pool: _Channels) -> ToolPayer | None:
        """The channel the next call gives back, or None when a slot is free again."""
        waiter: asyncio.Future[ToolPayer | None] = asyncio.get_running_loop().create_future()
        pool.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over, then cancelled
                handed = waiter.result()
                if handed is None:
                    pool.hand(None)
                else:
                    pool.give_back(handed)
            raise

    async def _open_slot(self, pool: _Channels, seller: ToolSeller, offer: ToolOffer,
                         slot: int) -> ToolPayer:
        pool.opening.add(slot)
        opening = asyncio.ensure_future(asyncio.to_thread(self._open, seller, offer, slot))
        try:
            payer = await asyncio.shield(opening)
        except asyncio.CancelledError:  # the channel is still being opened: kept, idle
            opening.add_done_callback(functools.partial(self._opened_late, pool, slot))
            raise
        except BaseException:
            pool.opening.discard(slot)
            pool.hand(None)
            raise
        pool.opening.discard(slot)
        pool.members[slot] = payer
        return payer

    @staticmethod
    def _opened_late(pool: _Channels, slot: int, opening: asyncio.Future[ToolPayer]) -> None:
        pool.opening.discard(slot)
        if not opening.cancelled() and opening.exception() is None:
            pool.members[slot] = opening.result()
            pool.give_back(opening.result())
        else:
            pool.hand(None)

    def give_back(self, seller: ToolSeller, payer: ToolPayer) -> None:
        """``payer``'s call is over: its channel pays the next call of its seller."""
        self._sellers[seller.root].give_back(payer)

    def _open(self, seller: ToolSeller, offer: ToolOffer, slot: int = 0) -> ToolPayer:
        """``seller``'s payer on its channel ``slot``, told where disputes and resynced
        receipts count, its channel opened or checked on chain. Blocking."""
        payer = self._new_payer(seller, offer, self.folder(seller, slot))
        payer.on_dispute = functools.partial(self._disputed, seller)
        payer.on_resync = functools.partial(self._resynced, seller)
        try:
            self._ready(payer)
        except BaseException:
            payer.close()
            raise
        return payer

    def folder(self, seller: ToolSeller, slot: int = 0) -> Path:
        """Where ``seller``'s channel ``slot`` is kept."""
        name = hashlib.sha256(seller.root.encode()).hexdigest()[:16]
        return self.state_root / (f"{name}-{slot}" if slot else name)

    def _new_payer(self, seller: ToolSeller, offer: ToolOffer, folder: Path) -> ToolPayer:
        from agoranet.chain.addresses import resolve_addresses
        from agoranet.chain.rpc import connect

        w3 = connect(self.rpc_url, timeout=self.chain_timeout_s, retry=False)
        addresses = resolve_addresses(int(w3.eth.chain_id))
        return ToolPayer(offer, w3, addresses, account=self.account, state_dir=folder,
                         top_up=self.deposit)

    def _ready(self, payer: ToolPayer) -> None:
        """A new channel opened with the deposit; a saved one checked on chain."""
        if payer.state is None:
            payer.open(self.deposit)
        else:  # a chain that cannot be read now: the seller checks each voucher anyway
            payer.reconcile(unreadable_ok=True)

    def _disputed(self, seller: ToolSeller, dispute: Dispute) -> None:
        """What ``seller`` can claim beyond its receipts: spent, as outcome ``disputed``."""
        self.spend.add(SpendRow(f"dispute-{dispute.channel_id}", "", seller.root, 0, 0,
                                dispute.exposure, None, 0.0, "disputed"))
        self.budget.release(0, dispute.exposure)
        seller.events.append(f"dispute: {dispute.describe()}")
        if self.reputation is not None:  # a long ban: its tools are no longer listed
            self.reputation.add(seller.identity, seller.root, EventKind.DISPUTE,
                                detail=dispute.describe())

    def _resynced(self, seller: ToolSeller, receipt: Receipt, counted: int) -> None:
        """A receipt the gateway never saw with its result, adopted from a corrective 402."""
        self.spend.add(SpendRow(receipt.request_id, "", seller.root, 0, 0, counted, None, 0.0,
                                "resynced", json.dumps(receipt.to_json())))
        self.budget.release(0, counted)

    def payers(self) -> list[ToolPayer]:
        """Every seller's open payers, idle or paying."""
        return [payer for pool in self._sellers.values() for payer in pool.members.values()]

    def close(self) -> None:
        for payer in self.payers():
            payer.close()

