"""An ``exact`` seller that takes the signed transfer and never answers.

In process (the on-chain half is tests/payments/test_exact_cancel_chain.py): the
gateway's :class:`ExactBuyer` then asks its ``cancel`` (the token's EIP-3009
``cancelAuthorization`` for the transfer's nonce). Cancelled: the transfer can never
happen, so nothing is spent and the budget is whole again. Not cancelled -- the nonce
was used (the seller settled it), the chain cannot be read, or there is no wallet to
cancel with -- the price stays spent, as before: the seller may have the money.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from eth_account import Account
from test_tool_exact_outcomes import ARGS, PRICE, URL, Seller, _402, _offer

from agoranet.errors import ChainError
from agoranet.gateway.budget import Budget
from agoranet.gateway.tool_directory import ToolSeller
from agoranet.gateway.tool_exact import ExactBuyer
from agoranet.gateway.tool_outcome import CallOutcome
from agoranet.payments import x402wire

STABLECOIN = "0x" + "11" * 20


def _silent(headers: dict[str, str]) -> httpx.Response:
    raise httpx.ReadTimeout("stalled", request=httpx.Request("POST", URL))


def _buy(cancel: Any, budget: Budget) -> tuple[CallOutcome, list[str], Seller]:
    asked: list[str] = []

    async def stablecoin() -> str:
        return STABLECOIN

    async def cancelling(nonce: str) -> bool:
        asked.append(nonce)
        if isinstance(cancel, Exception):
            raise cancel
        return bool(cancel)

    seller = Seller(_402(), _silent)
    offer = _offer(["exact"])
    buyer = ExactBuyer(Account.create(), stablecoin, seller.post,
                       None if cancel is None else cancelling)
    outcome = asyncio.run(buyer.buy(ToolSeller("http://seller.test", offer), offer.tools[0],
                                    URL, ARGS, budget, "call-1"))
    return outcome, asked, seller


def _nonce(seller: Seller) -> str:
    [headers] = [h for _, _, h in seller.calls if h is not None]
    payment = x402wire.decode_payment_payload(headers[x402wire.PAYMENT_SIGNATURE])
    return str(payment.payload["authorization"]["nonce"]).lower()


def test_a_transfer_cancelled_unused_costs_nothing() -> None:
    budget = Budget(10_000)
    outcome, asked, seller = _buy(True, budget)
    assert asked == [_nonce(seller)]  # the very transfer that was sent
    assert outcome.amount == 0 and not outcome.answered and not outcome.blameless
    assert outcome.error == ("no answer after payment (ReadTimeout); its transfer was "
                             "cancelled on chain before the seller settled it: nothing paid")
    assert (budget.spent, budget.reserved) == (0, 0)


@pytest.mark.parametrize("cancel", [False, ChainError("rpc down"), None])
def test_a_transfer_not_cancelled_stays_spent(cancel: Any) -> None:
    budget = Budget(10_000)
    outcome, asked, seller = _buy(cancel, budget)
    assert asked == ([] if cancel is None else [_nonce(seller)])
    assert outcome.amount == PRICE and outcome.error == "no answer after payment (ReadTimeout)"
    assert (budget.spent, budget.reserved) == (PRICE, 0)
