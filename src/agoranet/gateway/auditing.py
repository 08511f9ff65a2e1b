"""Background audits: the gateway checks a share of its nodes' work against reference weights.

After a share of requests (``share``, default 2%), the node that served it is
sent the auditor's challenge prompts (greedy and seeded) in a worker thread and
the answers are recomputed locally (:mod:`agoranet.verify`). An audit starts
only if its worst-case price fits the audit budget (``limit``: by default at
most 2% of what requests spend, see :mod:`agoranet.gateway.audit_budget`);
otherwise it is skipped. The challenges are paid through the node's payer like
any request, and each answered one is logged in the spend log with outcome
``audit``. A node that fails is banned for a long time and leaves the ranking;
every verdict is recorded on the node and in the reputation store, shown by
``agoranet nodes``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
import uuid
from typing import Any

from agoranet.errors import AgoranetError, ReceiptError
from agoranet.gateway.audit_budget import AuditBudget, audit_cost, listed_cost
from agoranet.gateway.audit_meter import AuditMeter, Charge
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.reputation import AUDIT_BAN_S, EventKind
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.registry.offer import ModelOffer

__all__ = ["FAILED_AUDIT_BAN_S", "Auditor"]

logger = logging.getLogger(__name__)

FAILED_AUDIT_BAN_S = AUDIT_BAN_S
MAX_TOKENS = 48  # per challenge answer


class Auditor:
    """Audits nodes in the background; at most one audit per node at a time."""

    def __init__(self, reference: Any, model: str, *, share: float = 0.02, seed: int | None = None,
                 rounds: int = 1, payers: NodePayers | None = None,
                 limit: AuditBudget | None = None, spend: SpendLog | None = None,
                 max_tokens: int = MAX_TOKENS) -> None:
        self.reference = reference
        self.model = model
        self.share = share
        self.rounds = rounds
        self.payers = payers
        self.limit = limit
        self.spend = spend
        self.max_tokens = max_tokens
        self.skipped = 0  # audits drawn but not started: over the audit budget
        self._random = random.Random(seed)  # which requests trigger an audit
        # Challenges come from the OS's randomness, or, with ``seed`` (tests), reproducibly.
        self._seeded = random.Random(f"challenges-{seed}") if seed is not None else None
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def draw(self) -> tuple[int, list[list[str]]]:
        """A fresh audit: the seed its challenges are drawn from, and their message texts."""
        from agoranet.verify.node_audit import PER_ROUND, challenges

        seed = secrets.randbits(63) if self._seeded is None else self._seeded.getrandbits(63)
        drawn = challenges(self.rounds * PER_ROUND, self.model, self.max_tokens,
                           random.Random(seed))
        return seed, [[m.content for m in r.messages or ()] for r in drawn]

    def cost(self, node: NodeState, prompts: list[list[str]]) -> int:
        """The worst-case price of asking ``prompts`` at ``node`` (0 if it lacks the model)."""
        model = node.model(self.model)
        return audit_cost(model, prompts, self.max_tokens) if model is not None else 0

    def after_request(self, node: NodeState, model: str) -> None:
        """Maybe schedule an audit of ``node`` (call after it served ``model``)."""
        if model != self.model or node.url in self._running:
            return
        if self._random.random() >= self.share:
            return
        seed, prompts = self.draw()
        cost = self.cost(node, prompts)
        if self.limit is not None and not self.limit.allows(cost):
            self._skip(node, cost)
            return
        self._running.add(node.url)
        task = asyncio.get_running_loop().create_task(self._audit(node, cost, seed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def audit_now(self, node: NodeState, *, reserved: int = 0,
                        seed: int | None = None) -> bool:
        """Audit ``node`` and apply the verdict; True if it passed.

        ``reserved`` is what the audit budget holds for it (0 for an audit on demand);
        it is replaced by what the audit cost. ``seed`` draws the challenges (from
        :meth:`draw`; by default fresh ones)."""
        from agoranet.verify.node_audit import audit_node

        if seed is None:
            seed = self.draw()[0]
        started = time.time()
        meter: AuditMeter | None = None
        try:
            auth = await self.payers.auth(node) if self.payers is not None else None
            meter = AuditMeter(auth)
            audit = await asyncio.to_thread(audit_node, node.url, self.model, self.reference,
                                            rounds=self.rounds, auth=meter,
                                            max_tokens=self.max_tokens, rng=random.Random(seed))
        except ReceiptError as exc:
            node.record_unauditable(self.model, str(exc), kind=EventKind.RECEIPT)
            return False
        except AgoranetError as exc:
            node.record_unauditable(self.model, str(exc))
            return False
        finally:
            await self._account(node, meter, reserved, started)
        node.record_audit(self.model, passed=audit.passed, answers=len(audit.results),
                          flagged=audit.flagged, tokens=audit.tokens)
        if not audit.passed:
            logger.warning("%s failed an audit", node.url)
        return audit.passed

    async def _audit(self, node: NodeState, cost: int, seed: int) -> None:
        try:
            if self.limit is not None and not await self.limit.reserve(cost):
                self._skip(node, cost)
                return
            await self.audit_now(node, reserved=cost if self.limit is not None else 0,
                                 seed=seed)
        finally:
            self._running.discard(node.url)

    def _skip(self, node: NodeState, cost: int) -> None:
        self.skipped += 1
        logger.info("audit of %s skipped: its worst case (%d) is over the audit budget",
                    node.url, cost)

    async def _account(self, node: NodeState, meter: AuditMeter | None, reserved: int,
                       started: float) -> None:
        """Log each answered challenge as an ``audit`` row; settle the audit budget."""
        charges = list(meter.charges) if meter is not None else []
        model = node.model(self.model)
        amounts = [_amount(c, model, meter is not None and meter.paid) for c in charges]
        if self.spend is not None and charges:
            request_id = f"audit-{uuid.uuid4().hex}"
            for charge, amount in zip(charges, amounts, strict=True):
                receipt = charge.receipt
                self.spend.add(SpendRow(
                    request_id, self.model, node.url,
                    receipt.tokens_in if receipt else charge.prompt_tokens,
                    receipt.tokens_out if receipt else charge.completion_tokens,
                    amount, None, charge.duration_ms, "audit",
                    json.dumps(receipt.to_json()) if receipt else None))
        actual = sum(amounts)
        if self.limit is not None:
            await self.limit.settle(reserved, actual)
        logger.info("audit of %s took %.1fs and cost %d", node.url, time.time() - started, actual)

    def status(self) -> dict[str, Any]:
        """The audits' budget and counts, for ``/agoranet/nodes``."""
        limit = self.limit
        return {"model": self.model, "share": self.share, "running": len(self._running),
                "skipped": self.skipped,
                "budget_share": float(limit.share) if limit else None,
                "floor": limit.floor if limit else None,
                "spent": limit.spent if limit else None,
                "reserved": limit.reserved if limit else None,
                "allowance": limit.allowance() if limit else None}

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _amount(charge: Charge, model: ModelOffer | None, paid: bool) -> int:
    """A paid node is owed its receipt, nothing without one; a free node's listed price
    estimates what its answer was worth (as for requests, see the relay)."""
    if charge.receipt is not None:
        return int(charge.receipt.amount)
    if paid or model is None:
        return 0
    return listed_cost(model, charge.prompt_tokens, charge.completion_tokens)
