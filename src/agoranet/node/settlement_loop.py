"""The node's settlement loop: an asyncio task that claims and settles in batches.

Every ``interval`` seconds it asks the :class:`~agoranet.payments.accept.settlement.Settler`
(in a worker thread, since chain I/O blocks) whether a claim is due -- a
threshold reached or a withdrawal pending on a channel -- and claims and
settles if so, and retries a settle that failed after its claim. A failure is
logged and retried later (a channel whose claim keeps failing is set aside with
a back-off by the settler, so it never holds up the others). Each claim and settle
transaction is one log line and moves a counter (:mod:`agoranet.node.settlement_report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agoranet.errors import AgoranetError
from agoranet.node.settlement_report import SettlementReport
from agoranet.payments.accept.settlement import Settler

__all__ = ["SettlementLoop"]

logger = logging.getLogger(__name__)


class SettlementLoop:
    def __init__(self, settler: Settler, interval: float,
                 report: SettlementReport | None = None) -> None:
        self.settler = settler
        self.interval = interval
        self.report = report or SettlementReport()  # a log line per transaction
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="agoranet-settlement")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def tick(self, *, force: bool = False) -> None:
        try:
            await asyncio.to_thread(self.report.tick, self.settler, force=force)
        except AgoranetError as exc:
            logger.warning("settlement failed, retrying later: %s", exc)

    async def _run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.interval)
