"""Paying nodes from the owner's wallet: one channel per node, opened lazily.

Each paid node gets a :class:`~agoranet.payments.pay.payer.Payer` with its own
batch-settlement channel (deposit sized by the gateway's settings), driven
through :class:`~agoranet.payments.pay.httpx_auth.PayerAuth`: every request carries
the next cumulative voucher for its worst case, and every answer's signed
receipt is checked against what was streamed before the payer believes it.
Channel state and receipts live on disk under ``state_root``, one folder a node.

A node whose corrective 402 claims a charged total no receipt backs (see
:meth:`~agoranet.payments.pay.payer.Payer.resync`) is a dispute: what it can claim
beyond the receipts is counted in the budget and in the spend log (a row with
outcome ``disputed``, no receipt), the node gets a long ban in the reputation
store, and its channel pays it no more. A receipt adopted from a corrective 402
(an answer or final receipt the gateway never saw) is logged with outcome
``resynced`` and counted in the budget too, less what was counted already for the
request when its stream was cut (an ``unreceipted`` row, see
``agoranet.gateway.relay``).

A saved channel is checked on chain when it is loaded, and again when a node says
it holds no deposit (:meth:`~agoranet.payments.pay.payer.Payer.reconcile`): one the
chain no longer backs (a dev chain restarted without its state, a refund) is
retired with its receipts kept and a new one opened; what was done is logged
and noted in the node's events, and counts nothing against the node.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.spendlog import SpendLog, SpendRow

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from agoranet.gateway.node_payer import NodePayer
    from agoranet.payments.pay.httpx_auth import PaidRequest, PayerAuth
    from agoranet.payments.pay.payer import Dispute, Payer
    from agoranet.payments.receipts import Receipt

__all__ = ["NodePayers"]


class NodePayers:
    def __init__(self, rpc_url: str, account: LocalAccount, state_root: Path,
                 deposit: int, *, chain_timeout_s: float = 10.0) -> None:
        self.rpc_url = rpc_url
        self.chain_timeout_s = chain_timeout_s
        self.account = account
        self.state_root = state_root
        self.deposit = deposit
        self._auths: dict[str, PayerAuth] = {}
        self._node_payers: dict[str, NodePayer] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.budget: Budget | None = None  # where disputed amounts are counted (count_in)
        self.spend: SpendLog | None = None
        self._extra: list[Payer] = []  # channels of fine-tuning jobs (open_payer)

    def count_in(self, budget: Budget, spend: SpendLog) -> None:
        """Count disputed amounts in ``budget`` and ``spend`` (as outcome ``disputed``)."""
        self.budget, self.spend = budget, spend

    @property
    def address(self) -> str:
        return str(self.account.address)

    async def paid(self, node: NodeState, max_amount: int) -> PaidRequest | None:
        """How to pay one request to ``node`` of at most ``max_amount`` (None for a free
        node): its :class:`~agoranet.payments.pay.httpx_auth.Payment` gets the receipt. Opens
        the channel on first use; tops it up ahead of need (``agoranet.gateway.node_payer``)."""
        auth = await self.auth(node)
        if auth is None:
            return None
        payer = self._node_payers.get(node.url)
        if payer is None:
            from agoranet.gateway.node_payer import NodePayer

            payer = self._node_payers[node.url] = NodePayer(auth, self.deposit)
        return await payer.paid(max_amount)

    async def auth(self, node: NodeState) -> PayerAuth | None:
        """How to pay ``node`` (None for a free node); opens its channel on first use."""
        if node.offer is None or node.offer.payment is None:
            return None
        found = self._auths.get(node.url)
        if found is not None:
            return found
        async with self._locks.setdefault(node.url, asyncio.Lock()):
            if node.url not in self._auths:
                from agoranet.payments.pay.httpx_auth import PayerAuth

                payer = await asyncio.to_thread(self._open, node)
                self._auths[node.url] = PayerAuth(payer)
        return self._auths[node.url]

    def open_payer(self, node: NodeState, folder: Path) -> Payer:
        """A payer of ``node`` on a channel of its own kept in ``folder`` (opened now if
        new), counted in like the others and closed with them: a fine-tuning job holds
        its channel until it ends (see ``agoranet.gateway.job_paying``). Blocking."""
        payer = self._open(node, folder)
        self._extra.append(payer)
        return payer

    def _open(self, node: NodeState, folder: Path | None = None) -> Payer:
        from agoranet.chain.addresses import resolve_addresses
        from agoranet.chain.rpc import connect
        from agoranet.payments.pay.payer import Payer

        # one short try per JSON-RPC call: a frozen RPC fails opening the channel (and the
        # request) in seconds instead of web3's retries adding up to about a minute
        w3 = connect(self.rpc_url, timeout=self.chain_timeout_s, retry=False)
        addresses = resolve_addresses(int(w3.eth.chain_id))
        if folder is None:
            folder = self.state_root / hashlib.sha256(node.url.encode()).hexdigest()[:16]
        payer = Payer(node.url, w3, addresses, account=self.account, state_dir=folder,
                      top_up=self.deposit)
        payer.on_dispute = functools.partial(self._disputed, node)
        payer.on_resync = functools.partial(self._resynced, node)
        payer.on_reconcile = node.note
        try:
            if payer.state is None:
                payer.open(self.deposit)
            else:  # a chain that cannot be read now: the node checks each voucher anyway
                payer.reconcile(unreadable_ok=True)
        except BaseException:
            payer.close()
            raise
        return payer

    def _disputed(self, node: NodeState, dispute: Dispute) -> None:
        """Count what ``node`` can claim beyond its receipts as spent, and ban it long.
        Runs in the payment flow (the event loop's thread for the gateway's requests)."""
        if self.spend is not None:
            self.spend.add(SpendRow(f"dispute-{dispute.channel_id}", "", node.url, 0, 0,
                                    dispute.exposure, None, 0.0, "disputed"))
        if self.budget is not None:
            self.budget.release(0, dispute.exposure)
        node.record_dispute(dispute.describe())

    def _resynced(self, node: NodeState, receipt: Receipt, counted: int) -> None:
        """A receipt the gateway never saw in an answer (a lost answer, a final receipt
        after a broken stream), adopted from a corrective 402: counted as spent."""
        if self.spend is not None:
            self.spend.add(SpendRow(receipt.request_id, "", node.url, 0, 0, counted, None, 0.0,
                                    "resynced", json.dumps(receipt.to_json())))
        if self.budget is not None:
            self.budget.release(0, counted)

    def payers(self) -> list[Payer]:
        return [auth.payer for auth in self._auths.values()]

    async def aclose(self) -> None:
        """Wait for the top-ups under way (their deposits are on chain either way), then
        close every payer."""
        try:
            for payer in self._node_payers.values():
                await payer.aclose()
        finally:
            self.close()

    def close(self) -> None:
        for auth in self._auths.values():
            auth.payer.close()
        for payer in self._extra:
            payer.close()
