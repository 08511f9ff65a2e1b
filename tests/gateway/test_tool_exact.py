"""The gateway pays sellers that take only ``exact``: one signed transfer a call.

In process: sellers are in-memory tool servers (``httpx.MockTransport``) whose offers
list ``exact`` alone; each answers an unpaid call with a 402 carrying the ``exact``
requirement, and a paid one with a settle response and a receipt signed with its real
key, for the request id and transfer nonce it was sent -- unless it cheats. The buyer's
transfer is signed by the gateway's account (no chain: nothing is settled here; the
on-chain test is tests/integration/test_tool_exact_market.py). Checked: the transfer is
of exactly the offer's price to the offer's payee, reserved from the budget and settled
at what moved, one spend row per seller tried; a seller whose receipt does not hold up
is counted as paid and recorded as a receipt disagreement; a failure with no payment
response costs nothing; the next seller answers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.schemas import PaymentRequired

from agoranet.errors import UpstreamError
from agoranet.gateway.budget import Budget, BudgetExceededError
from agoranet.gateway.reputation import Reputation
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.tool_buying import ToolMarket
from agoranet.gateway.tool_directory import ToolDirectory
from agoranet.gateway.tool_payer import ToolPayers
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import PaymentTerms
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.registry.offer import PaymentOffer
from agoranet.registry.signing import sign_offer
from agoranet.registry.tool_offer import build_tool_offer

STABLECOIN = "0x" + "11" * 20
CHAIN_ID = 31337
PRICE = 1000
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}


class ExactSeller:
    """A tool server taking only exact; ``behaviour`` says how it cheats or fails."""

    def __init__(self, name: str, behaviour: str = "ok", asks: int = PRICE) -> None:
        self.root = f"http://{name}.test"
        self.account: LocalAccount = Account.create()
        self.behaviour = behaviour
        self.asks = asks  # what its 402 asks
        self.paid: list[dict[str, Any]] = []  # the transfers it was sent
        self.terms = PaymentTerms(CHAIN_ID, STABLECOIN, self.account.address,
                                  self.account.address, "USD Coin", "2", schemes=("exact",))

    def offer(self) -> Any:
        terms = PaymentOffer(schemes=["exact"], network=f"eip155:{CHAIN_ID}",
                             asset=STABLECOIN, pay_to=self.account.address,
                             receiver_authorizer=self.account.address, withdraw_delay=900,
                             min_deposit=0, token_name="USD Coin", token_version="2")
        return sign_offer(build_tool_offer(self.root, [
            {"name": "echo", "description": "", "input_schema": SCHEMA, "price": PRICE}],
            terms), self.account)

    def handle(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get(x402wire.PAYMENT_SIGNATURE)
        if header is None:
            required = PaymentRequired(x402_version=2, accepts=[self.terms.requirement(
                "exact", self.asks, extra={"tool": "echo"})])
            return httpx.Response(402, json={}, headers={
                x402wire.PAYMENT_REQUIRED: x402wire.encode_model(required)})
        payment = x402wire.decode_payment_payload(header)
        authorization = payment.payload["authorization"]
        self.paid.append(authorization)
        if self.behaviour == "down":
            raise httpx.ReadTimeout("no answer", request=request)
        if self.behaviour == "fails":  # the tool raised: nothing charged, no payment response
            return httpx.Response(422, json={"error": {"message": "the tool raised"}})
        if self.behaviour == "no_receipt":
            return httpx.Response(200, json={"result": "free lunch"})
        request_id = request.headers["x-request-id"]
        nonce = authorization["nonce"]
        amount = int(authorization["value"])
        if self.behaviour == "other_request":
            request_id = "seller-own-id"
        if self.behaviour == "other_nonce":
            nonce = "0x" + "ee" * 32
        receipt = ReceiptSigner(bytes(self.account.key)).sign(
            Receipt(request_id, nonce, 1, 0, amount, amount, CHAIN_ID))
        settle = {"success": True, "transaction": "0x" + "ab" * 32,
                  "network": f"eip155:{CHAIN_ID}", "payer": authorization["from"],
                  "extra": {"receipt": receipt.to_json()}}
        return httpx.Response(200, json={"result": "hi"}, headers={
            x402wire.PAYMENT_RESPONSE: x402wire.encode_json(settle)})


class _Payers(ToolPayers):
    def __init__(self, budget: Budget, spend: SpendLog, folder: Path) -> None:
        super().__init__("http://no-chain.test", Account.create(), folder, 100_000, budget,
                         spend)

    async def stablecoin(self) -> str:
        return STABLECOIN


class Market:
    def __init__(self, tmp_path: Path, sellers: list[ExactSeller], limit: int) -> None:
        by_root = {s.root: s for s in sellers}
        self.budget = Budget(limit)
        self.spend = SpendLog(tmp_path / "spend.sqlite")
        self.reputation = Reputation(tmp_path / "reputation.sqlite")
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(
            lambda request: by_root[f"http://{request.url.host}"].handle(request)))
        directory = ToolDirectory([], self.client)
        for seller in sellers:
            directory.add(seller.root).offer = seller.offer()
        self.payers = _Payers(self.budget, self.spend, tmp_path / "channels")
        self.market = ToolMarket(directory, self.client, self.budget, self.spend, self.payers,
                                 self.reputation)

    def call(self) -> dict[str, Any]:
        return asyncio.run(self.market.call("echo", {"text": "hi"}, key="agent"))

    def rows(self) -> list[tuple[str, str, int, str | None]]:
        return [(r.node, r.outcome, r.amount, r.key) for r in self.spend.rows()]

    def events(self, seller: ExactSeller) -> tuple[int, int, int]:
        record = self.reputation.record(seller.account.address)
        return record.successes, record.failures, record.receipts

    def close(self) -> None:
        self.payers.close()
        self.spend.close()
        self.reputation.close()


@pytest.fixture
def build(tmp_path: Path) -> Any:
    made: list[Market] = []

    def make(*sellers: ExactSeller, limit: int = 10_000) -> Market:
        made.append(Market(tmp_path / str(len(made)), list(sellers), limit))
        return made[-1]
    yield make
    for market in made:
        market.close()


def test_a_transfer_of_the_price_to_the_payee_is_spent(build: Any) -> None:
    seller = ExactSeller("s")
    m = build(seller)
    answer = m.call()
    assert answer["result"] == {"result": "hi"} and answer["cost"] == PRICE
    assert answer["receipt"]["requestId"] == answer["id"]
    [sent] = seller.paid
    assert sent["from"] == m.payers.account.address
    assert (sent["to"], int(sent["value"])) == (seller.account.address, PRICE)
    assert m.rows() == [(seller.root, "ok", PRICE, "agent")]
    assert (m.budget.spent, m.budget.reserved) == (PRICE, 0)
    assert m.events(seller) == (1, 0, 0)
    assert m.payers.payers() == []  # no channel


def test_over_budget_nothing_is_signed(build: Any) -> None:
    seller = ExactSeller("s")
    m = build(seller, limit=PRICE - 1)
    with pytest.raises(BudgetExceededError):
        m.call()
    assert seller.paid == [] and m.rows() == [] and m.budget.spent == 0


@pytest.mark.parametrize("behaviour", ["other_request", "other_nonce", "no_receipt"])
def test_a_receipt_that_does_not_hold_up_counts_as_paid_and_disagreed(
        behaviour: str, build: Any) -> None:
    cheat, honest = ExactSeller("a", behaviour), ExactSeller("b")
    m = build(cheat, honest)
    answer = m.call()
    assert answer["seller"] == honest.root
    [tried] = answer["tried"]
    assert tried["seller"] == cheat.root and tried["charged"] == PRICE
    assert sorted(m.rows()) == [(cheat.root, "failed", PRICE, "agent"),
                                (honest.root, "ok", PRICE, "agent")]
    assert (m.budget.spent, m.budget.reserved) == (2 * PRICE, 0)
    assert m.events(cheat) == (0, 0, 1)  # a receipt disagreement


@pytest.mark.parametrize(("behaviour", "asks", "charged", "paid"), [
    ("fails", PRICE, 0, 1),  # no payment response: nothing moved
    ("down", PRICE, PRICE, 1),  # no answer: the signed transfer may still be settled
    ("ok", PRICE + 1, 0, 0),  # its 402 asks more than its offer: nothing signed
    ("ok", PRICE - 1, 0, 0),  # ... or another price than its offer states
])
def test_a_failure_is_the_sellers_and_the_next_answers(behaviour: str, asks: int, charged: int,
                                                       paid: int, build: Any) -> None:
    bad, good = ExactSeller("a", behaviour, asks), ExactSeller("b")
    m = build(bad, good)
    answer = m.call()
    assert answer["seller"] == good.root and answer["tried"][0]["charged"] == charged
    assert len(bad.paid) == paid
    assert m.budget.spent == PRICE + charged and m.budget.reserved == 0
    assert m.events(bad) == (0, 1, 0)


def test_every_seller_failing_is_an_upstream_error(build: Any) -> None:
    seller = ExactSeller("a", "fails")
    m = build(seller)
    with pytest.raises(UpstreamError, match="every seller"):
        m.call()
    assert m.rows() == [(seller.root, "failed", 0, "agent")] and m.budget.spent == 0
