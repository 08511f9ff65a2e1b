"""Paying nodes from the owner's wallet: one channel per node, opened lazily.

Each paid node gets a :class:`~agoranet.payments.payer.Payer` with its own
batch-settlement channel (deposit sized by the gateway's settings), driven
through :class:`~agoranet.payments.httpx_auth.PayerAuth`: every request carries
the next cumulative voucher for its worst case, and every answer's signed
receipt is checked against what was streamed before the payer believes it.
Channel state and receipts live on disk under ``state_root``, one folder a node.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from agoranet.gateway.nodes import NodeState

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from agoranet.payments.httpx_auth import PayerAuth
    from agoranet.payments.payer import Payer

__all__ = ["NodePayers"]


class NodePayers:
    def __init__(self, rpc_url: str, account: LocalAccount, state_root: Path,
                 deposit: int) -> None:
        self.rpc_url = rpc_url
        self.account = account
        self.state_root = state_root
        self.deposit = deposit
        self._auths: dict[str, PayerAuth] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def address(self) -> str:
        return str(self.account.address)

    async def auth(self, node: NodeState) -> httpx.Auth | None:
        """How to pay ``node`` (None for a free node); opens its channel on first use."""
        if node.offer is None or node.offer.payment is None:
            return None
        found = self._auths.get(node.url)
        if found is not None:
            return found
        async with self._locks.setdefault(node.url, asyncio.Lock()):
            if node.url not in self._auths:
                from agoranet.payments.httpx_auth import PayerAuth

                payer = await asyncio.to_thread(self._open, node.url)
                self._auths[node.url] = PayerAuth(payer)
        return self._auths[node.url]

    def _open(self, url: str) -> Payer:
        from agoranet.chain.addresses import resolve_addresses
        from agoranet.chain.rpc import connect
        from agoranet.payments.payer import Payer

        w3 = connect(self.rpc_url)
        addresses = resolve_addresses(int(w3.eth.chain_id))
        folder = self.state_root / hashlib.sha256(url.encode()).hexdigest()[:16]
        payer = Payer(url, w3, addresses, account=self.account, state_dir=folder,
                      top_up=self.deposit)
        if payer.state is None:
            payer.open(self.deposit)
        return payer

    def payers(self) -> list[Payer]:
        return [auth.payer for auth in self._auths.values()]

    def close(self) -> None:
        for auth in self._auths.values():
            auth.payer.close()
