"""How the gateway buys one tool call: budget first, then pay, check, fail over, account.

Unit tests of :class:`~agoranet.gateway.tool_buying.ToolMarket`'s logic over in-memory
sellers (httpx's mock transport) that sign real receipts with their keys, each paid by
a real :class:`~agoranet.gateway.tool_payer.ToolPayer` whose channel state is set by
hand (no chain here; the on-chain run is ``tests/integration/test_tool_market.py``):

- the cheapest seller is paid the price and its receipt settles the reservation: one
  spend-log row (key, seller, amount, receipt), a success in the reputation store;
- a call over the budget is refused before anything is sent or signed;
- a seller that fails before a result (no answer, an error without a charge) is skipped
  for the next, costs nothing, and is recorded as a failure; one that charges and fails
  is paid what it receipted (counted as spent) and recorded as a receipt disagreement;
  one that answers a paid call without a receipt is counted the whole voucher;
- the seller's 400 (bad arguments) is the buyer's mistake: passed back, nobody blamed,
  nothing spent;
- a price that varies is quoted by the seller's 402 first, reserved and paid exactly; a
  quote above the offer's bound is not paid;
- a corrective 402 (the seller's charged total is behind ours) is followed, then paid.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from x402.schemas import PaymentRequired, PaymentRequirements

from agoranet.chain.addresses import ChainAddresses
from agoranet.errors import InvalidRequestError, UpstreamError
from agoranet.gateway.budget import Budget, BudgetExceededError
from agoranet.gateway.reputation import Reputation
from agoranet.gateway.spendlog import SpendLog
from agoranet.gateway.tool_buying import MAX_RESULT_BYTES, ToolMarket
from agoranet.gateway.tool_directory import ToolDirectory, ToolSeller
from agoranet.gateway.tool_payer import ToolPayer, ToolPayers
from agoranet.payments import x402wire
from agoranet.payments.pay.payer_store import ChannelState
from agoranet.payments.receipts import Receipt, ReceiptSigner
from agoranet.registry.offer import PaymentOffer
from agoranet.registry.signing import sign_offer
from agoranet.registry.tool_offer import build_tool_offer

STABLECOIN = "0x" + "11" * 20
CHAIN_ID = 31337
ADDRESSES = ChainAddresses(CHAIN_ID, STABLECOIN, "0x" + "33" * 20, "0x" + "44" * 20, None,
                           "USD Coin", "2")
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}
START = 5_000  # what each channel was charged before


class Seller:
    """One in-memory tool server: its key, its channel, what it does with a call."""

    def __init__(self, name: str, price: Any, behaviour: str = "ok") -> None:
        self.root = f"http://{name}.test"
        self.account: LocalAccount = Account.create()
        self.channel = "0x" + bytes([len(name)] * 32).hex()
        self.price = price
        self.behaviour = behaviour
        self.charged = START
        self.requests: list[httpx.Request] = []
        self.quote = 77
        self.request_id = "seller-id"

    def offer(self) -> Any:
        terms = PaymentOffer(schemes=["batch-settlement"], network=f"eip155:{CHAIN_ID}",
                             asset=STABLECOIN, pay_to=self.account.address,
                             receiver_authorizer="0x" + "22" * 20, withdraw_delay=900,
                             min_deposit=0, token_name="USD Coin", token_version="2")
        return sign_offer(build_tool_offer(self.root, [
            {"name": "echo", "description": "", "input_schema": SCHEMA,
             "price": self.price}], terms), self.account)

    def _receipt(self, amount: int) -> str:
        self.charged += amount
        receipt = ReceiptSigner(bytes(self.account.key)).sign(
            Receipt(self.request_id, self.channel, 1, 0, amount, self.charged, CHAIN_ID))
        return x402wire.encode_json({"success": True, "extra": {
            "receipt": receipt.to_json(), "chargedAmount": str(amount)}})

    def _required(self, amount: int, error: str | None = None,
                  extra: dict[str, Any] | None = None) -> httpx.Response:
        required = PaymentRequired(x402_version=2, error=error, accepts=[PaymentRequirements(
            scheme="batch-settlement", network=f"eip155:{CHAIN_ID}", asset=STABLECOIN,
            amount=str(amount), pay_to=self.account.address, max_timeout_seconds=60,
            extra=extra or {})])
        return httpx.Response(402, headers={x402wire.PAYMENT_REQUIRED:
                                            x402wire.encode_model(required)}, json={})

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.request_id = request.headers.get("x-request-id", "seller-id")  # as a node does
        paid = x402wire.PAYMENT_SIGNATURE in request.headers
        price = self.price if isinstance(self.price, int) else self.quote
        if self.behaviour == "down":
            raise httpx.ConnectError("refused", request=request)
        if self.behaviour == "bad_arguments":
            return httpx.Response(400, json={"error": {"message": "'text': required"}})
        if not paid:
            return self._required(price)
        if self.behaviour == "overclaims":  # a charged total no receipt of ours backs
            return self._required(price, "invalid_batch_settlement_evm_cumulative_mismatch",
                                  {"channelState": {"channelId": self.channel,
                                                    "chargedCumulativeAmount":
                                                        str(START + 50_000)}})
        if self.behaviour == "corrective" and len(self.requests) == 1:
            self.charged = START - 1000  # it lost a charge: it asks from its own total
            return self._required(price, "invalid_batch_settlement_evm_cumulative_mismatch",
                                  {"channelState": {"channelId": self.channel,
                                                    "chargedCumulativeAmount":
                                                        str(self.charged)}})
        if self.behaviour == "fails":
            return httpx.Response(422, json={"error": {"message": "the tool raised"}})
        if self.behaviour == "charges_and_fails":
            return httpx.Response(500, headers={x402wire.PAYMENT_RESPONSE: self._receipt(price)},
                                  json={"error": {"message": "crashed"}})
        if self.behaviour == "huge":  # paid, then an answer past the gateway's limit
            return httpx.Response(200, headers={x402wire.PAYMENT_RESPONSE: self._receipt(price)},
                                  content=b'"' + b"x" * (MAX_RESULT_BYTES + 1) + b'"')
        if self.behaviour == "no_receipt":
            return httpx.Response(200, json={"result": "free lunch"})
        return httpx.Response(200, headers={x402wire.PAYMENT_RESPONSE: self._receipt(price)},
                              json={"result": json.loads(request.content)["text"]})


class _Payers(ToolPayers):
    """Payers over channel states set by hand (the chain is not asked)."""

    def __init__(self, sellers: dict[str, Seller], budget: Budget, spend: SpendLog,
                 folder: Path, reputation: Reputation) -> None:
        super().__init__("http://no-chain.test", Account.create(), folder, 100_000, budget,
                         spend, reputation=reputation)
        self.sellers = sellers

    def _new_payer(self, seller: ToolSeller, offer: Any, folder: Path) -> ToolPayer:
        payer = ToolPayer(offer, Web3(), ADDRESSES, account=self.account, state_dir=folder)
        payer.state = ChannelState(self.sellers[seller.root].channel, {}, deposited=100_000,
                                   charged=START, voucher=START)
        return payer

    def _ready(self, payer: ToolPayer) -> None:
        pass  # no chain to open or check the channel on


class Market:
    def __init__(self, tmp_path: Path, sellers: list[Seller], limit: int | None = None) -> None:
        self.sellers = {s.root: s for s in sellers}
        self.budget = Budget(limit)
        self.spend = SpendLog(tmp_path / "spend.sqlite")
        self.reputation = Reputation(tmp_path / "reputation.sqlite")

        def route(request: httpx.Request) -> httpx.Response:
            return self.sellers[f"http://{request.url.host}"].handle(request)
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(route))
        directory = ToolDirectory([], self.client)
        for seller in sellers:
            directory.add(seller.root).offer = seller.offer()
        self.payers = _Payers(self.sellers, self.budget, self.spend, tmp_path / "channels",
                              self.reputation)
        self.market = ToolMarket(directory, self.client, self.budget, self.spend, self.payers,
                                 self.reputation)

    def call(self, text: str = "hi") -> dict[str, Any]:
        return asyncio.run(self.market.call("echo", {"text": text}, key="agent"))

    def rows(self) -> list[tuple[str, str, int, str | None]]:
        return [(r.node, r.outcome, r.amount, r.key) for r in self.spend.rows()]

    def events(self, seller: Seller) -> tuple[int, int, int]:
        record = self.reputation.record(seller.account.address)
        return record.successes, record.failures, record.receipts

    def close(self) -> None:
        self.payers.close()
        self.spend.close()
        self.reputation.close()


@pytest.fixture
def build(tmp_path: Path) -> Any:
    made: list[Market] = []

    def make(*sellers: Seller, limit: int | None = None) -> Market:
        market = Market(tmp_path, list(sellers), limit)
        made.append(market)
        return market
    yield make
    for market in made:
        market.close()


def test_the_cheapest_seller_is_paid_its_price(build: Callable[..., Market]) -> None:
    cheap, dear = Seller("cheap", 1000), Seller("dear", 2000)
    m = build(dear, cheap, limit=10_000)
    answer = m.call()
    assert answer["result"] == {"result": "hi"} and answer["seller"] == cheap.root
    assert answer["cost"] == 1000 and answer["receipt"]["amount"] == "1000"
    assert answer["tried"] == [] and not dear.requests
    assert m.rows() == [(cheap.root, "ok", 1000, "agent")]
    assert (m.budget.spent, m.budget.reserved) == (1000, 0)
    assert m.events(cheap) == (1, 0, 0)


def test_over_budget_nothing_is_sent_or_signed(build: Callable[..., Market]) -> None:
    seller = Seller("s", 1000)
    m = build(seller, limit=999)
    with pytest.raises(BudgetExceededError):
        m.call()
    assert not seller.requests and m.rows() == [] and m.budget.spent == 0
    assert m.payers.payers() == []  # no channel, no voucher


@pytest.mark.parametrize("behaviour", ["down", "fails"])
def test_a_failure_before_a_result_costs_nothing_and_the_next_answers(
        behaviour: str, build: Callable[..., Market]) -> None:
    bad, good = Seller("bad", 1000, behaviour), Seller("good", 1000)
    m = build(bad, good, limit=10_000)
    answer = m.call()  # same price and score: "bad" before "good" by URL
    assert [t["seller"] for t in answer["tried"]] == [bad.root]
    assert answer["seller"] == good.root
    assert answer["tried"][0]["charged"] == 0
    assert m.rows() == [(bad.root, "failed", 0, "agent"), (good.root, "ok", 1000, "agent")]
    assert m.budget.spent == 1000
    assert m.events(bad) == (0, 1, 0) and m.events(good) == (1, 0, 0)


def test_a_seller_that_charges_and_fails_is_a_receipt_disagreement(
        build: Callable[..., Market]) -> None:
    cheat, good = Seller("cheat", 900, "charges_and_fails"), Seller("good", 1000)
    m = build(cheat, good, limit=10_000)
    answer = m.call()
    assert answer["seller"] == good.root and answer["tried"][0]["charged"] == 900
    assert m.rows() == [(cheat.root, "failed", 900, "agent"), (good.root, "ok", 1000, "agent")]
    assert m.budget.spent == 1900
    assert m.events(cheat) == (0, 0, 1)


def test_an_answer_past_the_limit_is_a_charged_failure(build: Callable[..., Market]) -> None:
    huge, good = Seller("huge", 900, "huge"), Seller("good", 1000)
    m = build(huge, good, limit=10_000)
    answer = m.call()
    assert answer["seller"] == good.root and "not JSON" in answer["tried"][0]["error"]
    assert m.rows() == [(huge.root, "failed", 900, "agent"), (good.root, "ok", 1000, "agent")]
    assert m.events(huge) == (0, 0, 1)


def test_a_paid_answer_without_a_receipt_counts_the_voucher(
        build: Callable[..., Market]) -> None:
    cheat = Seller("cheat", 900, "no_receipt")
    m = build(cheat, limit=10_000)
    with pytest.raises(UpstreamError, match="without a receipt"):
        m.call()
    assert m.rows() == [(cheat.root, "failed", 900, "agent")] and m.budget.spent == 900
    assert m.events(cheat) == (0, 0, 1)


def test_bad_arguments_are_the_buyers_mistake(build: Callable[..., Market]) -> None:
    seller = Seller("s", 1000, "bad_arguments")
    m = build(seller, limit=10_000)
    with pytest.raises(InvalidRequestError, match="refused the arguments"):
        m.call()
    assert m.rows() == [] and m.budget.spent == 0 and m.events(seller) == (0, 0, 0)


def test_a_varying_price_is_quoted_then_paid_exactly(build: Callable[..., Market]) -> None:
    seller = Seller("s", {"varies": True, "max_amount": 100})
    m = build(seller, limit=10_000)
    answer = m.call()
    assert answer["cost"] == 77 and m.budget.spent == 77
    unpaid, paid = seller.requests
    assert x402wire.PAYMENT_SIGNATURE not in unpaid.headers
    voucher = x402wire.decode_payment_payload(paid.headers[x402wire.PAYMENT_SIGNATURE])
    assert voucher.accepted.amount == "77"
    seller.quote = 101  # above the offer's bound: not paid
    with pytest.raises(UpstreamError, match="above the most"):
        m.call()
    assert len(seller.requests) == 3 and m.budget.spent == 77


def test_a_corrective_402_is_followed(build: Callable[..., Market]) -> None:
    seller = Seller("s", 1000, "corrective")
    m = build(seller, limit=10_000)
    answer = m.call()
    assert answer["cost"] == 1000 and len(seller.requests) == 2
    payer = m.payers.payers()[0]
    assert payer.state is not None and payer.state.charged == START  # 4000 + 1000


def test_a_gateway_without_a_wallet_blames_no_seller(build: Callable[..., Market]) -> None:
    seller = Seller("s", 1000)
    m = build(seller, limit=10_000)
    m.market.payers = None
    with pytest.raises(UpstreamError, match="no wallet"):
        m.call()
    assert not seller.requests and m.rows() == [] and m.events(seller) == (0, 0, 0)


def test_a_seller_that_claims_more_than_its_receipts_is_banned(
        build: Callable[..., Market]) -> None:
    """Its corrective 402 claims 50,000 more than our receipts: a dispute. What it can
    claim beyond them (the highest voucher signed: START + 1000, less START) is counted as
    spent, its channel pays it no more, and its tools are no longer listed."""
    cheat, good = Seller("cheat", 900, "overclaims"), Seller("good", 1000)
    m = build(cheat, good, limit=100_000)
    answer = m.call()
    assert answer["seller"] == good.root
    disputed = [r for r in m.spend.rows() if r.outcome == "disputed"]
    assert [(r.node, r.amount) for r in disputed] == [(cheat.root, 900)]
    assert m.budget.spent == 900 + 1000
    assert m.reputation.record(cheat.account.address).disputes == 1
    assert [s.root for g in m.market.listing() for s, _ in g.sellers] == [good.root]
