"""A node killed between recording a running receipt and sending it (money tests only).

ASGI middleware around a node's streamed completions, outside its payment
middleware: as the ``at``-th running receipt of a stream is about to go out -- the
node has recorded it in its ledger already (:mod:`agoranet.node.payment_middleware`
records each before it sends it) -- it kills its own process with SIGKILL. The
buyer has every token that receipt covers but never the receipt, while the node,
restarted on its ledger, charges it and can claim it. The chaos
``kill-at-receipt:K`` of :mod:`agoranet.testing.chaos`, for a node *process* only:
it kills whatever process it runs in.
"""

from __future__ import annotations

import os
import signal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agoranet.node.payment_middleware import RUNNING_RECEIPT_OBJECT

__all__ = ["KillAtReceipt"]

_RUNNING = f'"{RUNNING_RECEIPT_OBJECT}"'.encode()  # in a running receipt's frame


class KillAtReceipt:
    """SIGKILL this process as a stream's ``at``-th running receipt is about to be sent."""

    def __init__(self, app: ASGIApp, *, at: int) -> None:
        if at < 1:
            raise ValueError("the running receipt to die at is counted from 1")
        self.app, self.at = app, at

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/completions"):
            await self.app(scope, receive, send)
            return
        receipts = 0

        async def dying_send(message: Message) -> None:
            nonlocal receipts
            if message["type"] == "http.response.body" and _RUNNING in message.get("body", b""):
                receipts += 1
                if receipts == self.at:  # recorded in the ledger, never sent
                    os.kill(os.getpid(), signal.SIGKILL)
            await send(message)

        await self.app(scope, receive, dying_send)
