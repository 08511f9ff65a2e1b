"""Paying a paid node for audit challenges, within a stated audit budget.

The auditor pays as the gateway does: a :class:`~agoranet.payments.pay.payer.Payer`
with its own channel to the node (state and receipts kept on disk, a saved
channel checked on chain first: see :meth:`~agoranet.payments.pay.payer.Payer.
reconcile`), driven through :class:`~agoranet.payments.pay.httpx_auth.PayerAuth`, so
every answer's signed receipt is checked before it is believed.

The budget is a hard cap on what the audit can cost: each challenge's voucher allows
at most its worst case (the prompt's bytes bound its tokens, plus ``max_tokens``),
and a challenge is only asked while what the receipts say was spent plus that worst
case stays within the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agoranet.engines.base import GenerationRequest
from agoranet.market import worst_case

if TYPE_CHECKING:
    from agoranet.payments.pay.httpx_auth import PaidRequest, PayerAuth
    from agoranet.payments.pay.payer import Payer

__all__ = ["AuditPayment"]


@dataclass
class AuditPayment:
    """Pays the challenges of one audit through ``payer``, at most ``budget`` base units."""

    payer: Payer
    budget: int
    auth: PayerAuth
    _start: int = 0

    @classmethod
    def over(cls, payer: Payer, budget: int) -> AuditPayment:
        from agoranet.payments.pay.httpx_auth import PayerAuth

        start = payer.state.spent if payer.state is not None else 0
        return cls(payer, budget, PayerAuth(payer), start)

    @property
    def spent(self) -> int:
        """What this audit has spent so far, by the node's checked receipts."""
        return (self.payer.state.spent if self.payer.state is not None else 0) - self._start

    def paying(self, worst: int | None) -> PaidRequest:
        """The auth for one challenge, its voucher capped at ``worst`` (None: the
        payer's maximum); its verified receipt is checked into the payer's state."""
        from agoranet.payments.pay.httpx_auth import Payment

        return self.auth.paying(Payment(worst))

    def worst(self, request: GenerationRequest) -> int:
        """The most ``request`` can cost at the node's prices (a token is at least a byte)."""
        prompt = sum(len(m.content.encode()) + 8 for m in request.messages or ()) + 16
        prices = self.payer.prices(request.model, commitments=request.commitments)
        return worst_case(prices, prompt, request.max_tokens or 0)

    def allows(self, worst: int) -> bool:
        """Whether a challenge that may cost ``worst`` still fits in the budget."""
        return self.spent + worst <= self.budget
