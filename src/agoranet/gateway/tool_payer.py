"""Paying tool servers: the node payer's batch-settlement channel, priced per call.

A :class:`ToolPayer` is a :class:`~agoranet.payments.payer.Payer` (one channel, the
voucher saved before it leaves, corrective 402s, disputes, reconciling with the chain)
whose terms come from a checked :class:`~agoranet.registry.tool_offer.ToolOffer`
instead of a node's offer, and whose receipts are checked against a tool's price per
call instead of token prices (:meth:`ToolPayer.check_call`): signed by the seller's
payee, for this request (the ``x-request-id`` sent), channel and chain, never above
the voucher, in step with
what was charged before, and exactly the price (a price that varies with the
arguments: at most its stated maximum). :class:`ToolPayers` keeps one per seller,
opened on first use, its disputes and resynced receipts counted in the budget and the
spend log like a node's; a dispute (a charged total no receipt backs) is also a
``dispute`` event in the reputation store, which bans the seller for a week.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agoranet.errors import PaymentError, ReceiptError
from agoranet.gateway.budget import Budget
from agoranet.gateway.reputation import EventKind, Reputation
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.payments.payer import Payer, PendingPayment
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.registry.offer import Offer
from agoranet.registry.tool_offer import ToolOffer

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3 as _Web3

    from agoranet.chain.addresses import ChainAddresses
    from agoranet.gateway.tool_directory import ToolSeller
    from agoranet.payments.payer import Dispute

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


class ToolPayers:
    """One :class:`ToolPayer` per seller (keyed by root URL), opened on first use."""

    def __init__(self, rpc_url: str, account: LocalAccount, state_root: Path, deposit: int,
                 budget: Budget, spend: SpendLog, *, chain_timeout_s: float = 10.0,
                 reputation: Reputation | None = None) -> None:
        self.rpc_url = rpc_url
        self.account = account
        self.state_root = state_root
        self.deposit = deposit
        self.budget, self.spend = budget, spend
        self.chain_timeout_s = chain_timeout_s
        self.reputation = reputation
        self._payers: dict[str, ToolPayer] = {}
        self._locks: dict[str, asyncio.Lock] = {}
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

    def lock(self, seller: ToolSeller) -> asyncio.Lock:
        """Held for a whole call: one call at a time on a seller's channel."""
        return self._locks.setdefault(seller.root, asyncio.Lock())

    async def payer(self, seller: ToolSeller) -> ToolPayer:
        """The payer of ``seller`` (whose offer was checked); opens its channel if new.
        Call it holding :meth:`lock`."""
        found = self._payers.get(seller.root)
        if found is not None and found.tool_offer == seller.offer:
            return found
        assert seller.offer is not None
        if found is not None:  # a new offer: the same channel (same folder), new terms
            del self._payers[seller.root]
            found.close()
        payer = await asyncio.to_thread(self._open, seller, seller.offer)
        self._payers[seller.root] = payer
        return payer

    def _open(self, seller: ToolSeller, offer: ToolOffer) -> ToolPayer:
        """``seller``'s payer, told where disputes and resynced receipts count, its channel
        opened or checked on chain. Blocking."""
        payer = self._new_payer(seller, offer)
        payer.on_dispute = functools.partial(self._disputed, seller)
        payer.on_resync = functools.partial(self._resynced, seller)
        try:
            self._ready(payer)
        except BaseException:
            payer.close()
            raise
        return payer

    def _new_payer(self, seller: ToolSeller, offer: ToolOffer) -> ToolPayer:
        from agoranet.chain.addresses import resolve_addresses
        from agoranet.chain.rpc import connect

        w3 = connect(self.rpc_url, timeout=self.chain_timeout_s, retry=False)
        addresses = resolve_addresses(int(w3.eth.chain_id))
        folder = self.state_root / hashlib.sha256(seller.root.encode()).hexdigest()[:16]
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
        return list(self._payers.values())

    def close(self) -> None:
        for payer in self._payers.values():
            payer.close()

