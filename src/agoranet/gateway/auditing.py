"""Background audits: the gateway checks a share of its nodes' work against reference weights.

After a share of requests (``share``, default 2%), the node that served it is
sent the auditor's challenge prompts (greedy and seeded) in a worker thread and
the answers are recomputed locally (:mod:`agoranet.verify`). A node that fails
is banned for a long time and leaves the ranking; every audit is recorded on
the node as an event, shown by ``agoranet nodes``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from agoranet.errors import AgoranetError
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers

__all__ = ["Auditor"]

logger = logging.getLogger(__name__)

FAILED_AUDIT_BAN_S = 86_400.0


class Auditor:
    """Audits nodes in the background; at most one audit per node at a time."""

    def __init__(self, reference: Any, model: str, *, share: float = 0.02, seed: int | None = None,
                 rounds: int = 1, payers: NodePayers | None = None) -> None:
        self.reference = reference
        self.model = model
        self.share = share
        self.rounds = rounds
        self.payers = payers
        self._random = random.Random(seed)
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def after_request(self, node: NodeState, model: str) -> None:
        """Maybe schedule an audit of ``node`` (call after it served ``model``)."""
        if model != self.model or node.url in self._running:
            return
        if self._random.random() >= self.share:
            return
        self._running.add(node.url)
        task = asyncio.get_running_loop().create_task(self._audit(node))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def audit_now(self, node: NodeState) -> bool:
        """Audit ``node`` and apply the verdict; True if it passed."""
        from agoranet.verify.node_audit import audit_node

        try:
            auth = await self.payers.auth(node) if self.payers is not None else None
            audit = await asyncio.to_thread(audit_node, node.url, self.model, self.reference,
                                            rounds=self.rounds, auth=auth)
        except AgoranetError as exc:
            node.audits.append(f"could not audit: {exc}")
            return False
        verdict = "passed" if audit.passed else "FAILED"
        node.audits.append(f"{verdict}: {audit.flagged}/{len(audit.results)} answers flagged, "
                           f"{audit.tokens} tokens")
        if not audit.passed:
            node.record_failure("failed an audit of the weights it serves",
                                FAILED_AUDIT_BAN_S, FAILED_AUDIT_BAN_S)
            logger.warning("%s failed an audit", node.url)
        return audit.passed

    async def _audit(self, node: NodeState) -> None:
        try:
            await self.audit_now(node)
        finally:
            self._running.discard(node.url)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
