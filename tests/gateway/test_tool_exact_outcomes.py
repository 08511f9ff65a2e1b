"""One ``exact`` purchase, outcome by outcome: what it costs and what it says.

In process, no chain: an :class:`ExactBuyer` with the gateway's real ``exact`` client (the
transfer signed by a fresh account), a real budget, and a seller played by a function that
records what it was sent and answers as each case needs (its receipts signed with its real
key). Checked for every way a call can end: the amount counted as spent (the signed
transfer is the seller's to settle once sent), whether it is the seller's fault, the
buyer's, or no one's, and the exact reason given.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from eth_account import Account
from x402.schemas import PaymentRequired

from agoranet.errors import ChainError, InvalidRequestError
from agoranet.gateway.budget import Budget
from agoranet.gateway.tool_directory import ToolSeller
from agoranet.gateway.tool_exact import ExactBuyer, exact_only
from agoranet.gateway.tool_outcome import CallOutcome
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import PaymentTerms
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.registry.offer import PaymentOffer
from agoranet.registry.tool_offer import ToolOffer, build_tool_offer

STABLECOIN = "0x" + "11" * 20
CHAIN_ID = 31337
PRICE = 1000
URL = "http://seller.test/tools/echo"
ARGS = {"text": "hi"}
SELLER = Account.create()


def _offer(schemes: list[str], price: Any = PRICE) -> ToolOffer:
    terms = PaymentOffer(schemes=schemes, network=f"eip155:{CHAIN_ID}", asset=STABLECOIN,
                         pay_to=SELLER.address, receiver_authorizer=SELLER.address,
                         withdraw_delay=900, min_deposit=0, token_name="USD Coin",
                         token_version="2")
    return build_tool_offer("http://seller.test", [
        {"name": "echo", "description": "", "input_schema": {"type": "object"},
         "price": price}], terms)


def _402(amount: int = PRICE, pay_to: str = SELLER.address, asset: str = STABLECOIN,
         scheme: str = "exact") -> httpx.Response:
    terms = PaymentTerms(CHAIN_ID, asset, pay_to, pay_to, "USD Coin", "2",
                         schemes=(scheme,))
    required = PaymentRequired(x402_version=2, accepts=[terms.requirement(
        scheme, amount, extra={"tool": "echo"})])
    return httpx.Response(402, json={}, headers={
        x402wire.PAYMENT_REQUIRED: x402wire.encode_model(required)})


def _paid(sent: dict[str, str], status: int = 200, *, content: bytes = b'{"result": "hi"}',
          receipt: bool = True) -> httpx.Response:
    payment = x402wire.decode_payment_payload(sent[x402wire.PAYMENT_SIGNATURE])
    authorization = payment.payload["authorization"]
    settle: dict[str, Any] = {"success": True, "transaction": "0x" + "ab" * 32,
                              "network": f"eip155:{CHAIN_ID}", "payer": authorization["from"],
                              "extra": {}}
    if receipt:
        amount = int(authorization["value"])
        settle["extra"]["receipt"] = ReceiptSigner(bytes(SELLER.key)).sign(Receipt(
            sent["x-request-id"], authorization["nonce"], 1, 0, amount, amount,
            CHAIN_ID)).to_json()
    return httpx.Response(status, content=content, headers={
        x402wire.PAYMENT_RESPONSE: x402wire.encode_json(settle)})


class Seller:
    """Answers the unpaid call with ``first`` and the paid one with ``then(headers)``."""

    def __init__(self, first: Any, then: Any = None) -> None:
        self.first, self.then = first, then
        self.calls: list[tuple[str, dict[str, Any], dict[str, str] | None]] = []

    async def post(self, url: str, arguments: dict[str, Any],
                   headers: dict[str, str] | None) -> httpx.Response:
        self.calls.append((url, arguments, headers))
        answer = self.first if headers is None else self.then
        if isinstance(answer, Exception):
            raise answer
        return answer(headers) if callable(answer) else answer


def buy(seller: Seller, budget: Budget, *, token: str | Exception = STABLECOIN,
        offer: ToolOffer | None = None) -> CallOutcome:
    async def stablecoin() -> str:
        if isinstance(token, Exception):
            raise token
        return token

    offer = offer or _offer(["exact"])
    buyer = ExactBuyer(Account.create(), stablecoin, seller.post)
    return asyncio.run(buyer.buy(ToolSeller("http://seller.test", offer), offer.tools[0], URL,
                                 ARGS, budget, "call-1"))


def test_a_paid_answer_costs_the_price_and_carries_its_receipt() -> None:
    budget = Budget(10_000)
    seller = Seller(_402(), _paid)
    outcome = buy(seller, budget)
    assert (outcome.answered, outcome.result, outcome.amount) == (True, {"result": "hi"}, PRICE)
    assert outcome.receipt is not None and outcome.error is None
    assert budget.spent == PRICE and budget.reserved == 0
    (url1, args1, headers1), (url2, args2, headers2) = seller.calls
    assert (url1, args1, headers1) == (URL, ARGS, None)
    assert (url2, args2) == (URL, ARGS) and headers2 is not None
    assert set(headers2) == {x402wire.PAYMENT_SIGNATURE, "x-request-id"}
    assert headers2["x-request-id"] == "call-1"
    authorization = x402wire.decode_payment_payload(
        headers2[x402wire.PAYMENT_SIGNATURE]).payload["authorization"]
    assert int(authorization["value"]) == PRICE and authorization["to"] == SELLER.address


@pytest.mark.parametrize(("case", "error", "spent", "blameless"), [
    ("chain_unreadable", "cannot pay: our chain cannot be read: rpc down", 0, True),
    ("other_token", "it wants token 0x" + "22" * 20 + ", not ours", 0, True),
    ("no_answer", "no answer (ConnectError)", 0, False),
    ("unpaid_error", "503: busy", 0, False),
    ("no_price", "its 402 carries no exact price", 0, False),
    ("other_price", f"it asks 1200 for a call its offer prices at {PRICE}", 0, False),
    ("other_payee", "its exact requirement cannot be paid: ", 0, False),
    ("other_asset", "its exact requirement cannot be paid: ", 0, False),
    ("no_answer_after_payment", "no answer after payment (ReadTimeout)", PRICE, False),
])
def test_a_call_that_ends_early_says_why_and_what_it_cost(
        case: str, error: str, spent: int, blameless: bool) -> None:
    budget = Budget(10_000)
    request = httpx.Request("POST", URL)
    token: str | Exception = STABLECOIN
    first: Any = _402()
    then: Any = _paid
    if case == "chain_unreadable":
        token = ChainError("rpc down")
    elif case == "other_token":
        token = "0x" + "33" * 20
        first = _402()
    elif case == "no_answer":
        first = httpx.ConnectError("refused", request=request)
    elif case == "unpaid_error":
        first = httpx.Response(503, json={"error": {"message": "busy"}})
    elif case == "no_price":
        first = httpx.Response(402, json={})
    elif case == "other_price":
        first = _402(1200)
    elif case == "other_payee":
        first = _402(pay_to=Account.create().address)
    elif case == "other_asset":
        first = _402(asset="0x" + "44" * 20)
    elif case == "no_answer_after_payment":
        then = httpx.ReadTimeout("stalled", request=request)
    offer = _offer(["exact"])
    if case == "other_token":
        offer = build_tool_offer("http://seller.test", [
            {"name": "echo", "description": "", "input_schema": {"type": "object"},
             "price": PRICE}], offer.payment.model_copy(update={"asset": "0x" + "22" * 20})
            if offer.payment else None)
    seller = Seller(first, then)
    outcome = buy(seller, budget, token=token, offer=offer)
    assert outcome.error is not None and outcome.error.startswith(error), outcome.error
    if not error.endswith(": "):
        assert outcome.error == error
    assert (outcome.amount, outcome.blameless, outcome.answered) == (spent, blameless, False)
    assert outcome.charged_failure is False and outcome.buyer_error is None
    assert budget.spent == spent and budget.reserved == 0
    paid_calls = [h for _, _, h in seller.calls if h is not None]
    assert len(paid_calls) == (1 if case == "no_answer_after_payment" else 0)


def test_a_varying_price_is_paid_within_its_bound() -> None:
    offer = _offer(["exact"], {"varies": True, "max_amount": 2000})
    within = buy(Seller(_402(1500), _paid), Budget(10_000), offer=offer)
    assert within.answered and within.amount == 1500
    above = buy(Seller(_402(2500), _paid), Budget(10_000), offer=offer)
    assert above.error == "it asks 2500 for a call its offer prices at 2000"


@pytest.mark.parametrize(("case", "error", "charged_failure", "with_receipt"), [
    ("refused_arguments", None, False, False),
    ("answer_without_receipt", "it answered a paid call without a receipt", True, False),
    ("failed_without_receipt", "500: broke", False, False),
    ("receipt_missing", "receipt refused: its payment response carries no signed receipt",
     True, False),
    ("bad_payment_response", "receipt refused: bad payment response: ", True, False),
    ("charged_and_failed", "charged 1000 and failed (500: broke)", True, True),
    ("charged_not_json", "charged 1000 and failed (its answer is not JSON)", True, True),
])
def test_a_paid_call_that_fails_says_why_and_what_it_cost(
        case: str, error: str | None, charged_failure: bool, with_receipt: bool) -> None:
    broke = b'{"error": {"message": "broke"}}'

    def then(sent: dict[str, str]) -> httpx.Response:
        if case == "refused_arguments":
            return httpx.Response(400, json={"error": {"message": "text must be a string"}})
        if case == "answer_without_receipt":
            return httpx.Response(200, json={"result": "free lunch"})
        if case == "failed_without_receipt":
            return httpx.Response(500, content=broke)
        if case == "receipt_missing":
            return _paid(sent, receipt=False)
        if case == "bad_payment_response":
            return httpx.Response(200, json={}, headers={x402wire.PAYMENT_RESPONSE: "%%%"})
        if case == "charged_and_failed":
            return _paid(sent, 500, content=broke)
        return _paid(sent, 200, content=b"not json")

    budget = Budget(10_000)
    outcome = buy(Seller(_402(), then), budget)
    assert outcome.answered is False and outcome.charged_failure is charged_failure
    assert (outcome.receipt is not None) is with_receipt
    if case == "refused_arguments":
        assert isinstance(outcome.buyer_error, InvalidRequestError)
        assert str(outcome.buyer_error) == \
            "the tool refused the arguments: 400: text must be a string"
        assert outcome.buyer_error.param == "arguments"
        assert outcome.error is None and outcome.amount == 0 and budget.spent == 0
        return
    assert outcome.buyer_error is None
    assert error is not None and outcome.error is not None
    assert outcome.error.startswith(error), outcome.error
    if not error.endswith(": "):
        assert outcome.error == error
    spent = PRICE if charged_failure else 0
    assert outcome.amount == spent and budget.spent == spent and budget.reserved == 0


def test_only_a_seller_taking_exact_and_no_batch_settlement_is_paid_by_transfer() -> None:
    assert exact_only(ToolSeller("http://s.test", _offer(["exact"])))
    assert not exact_only(ToolSeller("http://s.test", _offer(["exact", "batch-settlement"])))
    assert not exact_only(ToolSeller("http://s.test", _offer(["batch-settlement"])))
    assert not exact_only(ToolSeller("http://s.test", None))
    free = build_tool_offer("http://s.test", [
        {"name": "echo", "description": "", "input_schema": {"type": "object"}, "price": 0}])
    assert not exact_only(ToolSeller("http://s.test", free))


def test_an_unexpected_failure_after_signing_leaves_no_reservation() -> None:
    """A seller answer the gateway cannot even read (not an HTTP error: a bug, say)
    propagates, and the price reserved for the call is given back to the budget."""
    budget = Budget(10_000)
    with pytest.raises(RuntimeError, match="unreadable"):
        buy(Seller(_402(), RuntimeError("unreadable")), budget)
    assert budget.reserved == 0 and budget.spent == 0
