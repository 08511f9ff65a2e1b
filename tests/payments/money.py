"""The money invariants every payment scenario ends with (the buyer's side of the books)."""

from __future__ import annotations

from agoranet.payments.pay.payer import Payer

__all__ = ["assert_money_invariants", "receipted"]


def receipted(p: Payer) -> int:
    """What the receipts the payer holds add up to (a request's latest receipt counts: a
    final receipt shown after a running one replaces it)."""
    latest: dict[str, int] = {}
    for receipt in p.receipts():
        latest[receipt.request_id] = receipt.amount
    return sum(latest.values())


def assert_money_invariants(p: Payer, headroom: int) -> tuple[int, int]:
    """On chain, the node claimed at most the payer's receipts plus one request's
    ``headroom``, and the payer counted at least what was claimed as spent; returns
    (claimed, receipted)."""
    assert p.state is not None
    _, claimed = p.onchain()
    held = receipted(p)
    assert claimed <= held + headroom, f"claimed {claimed} > receipts {held} + {headroom}"
    assert p.state.spent >= claimed, f"spent {p.state.spent} < claimed {claimed}"
    return claimed, held
