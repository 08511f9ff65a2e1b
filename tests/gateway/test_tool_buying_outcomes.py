"""Each way a bought tool call can end, with exactly what it says and what it costs.

In process, over the in-memory sellers of test_tool_buying.py (real receipts, a real
budget, spend log and reputation store): a free tool is called with the arguments and
nothing is paid; a seller that cannot be reached, quotes no price, or cannot be paid is
skipped for the next with the reason said (blameless when the gateway could not pay); a
paid call whose payment response is unreadable counts the whole voucher as spent and as
a receipt disagreement; the seller's 400 after payment is the buyer's mistake.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from test_tool_buying import Seller, build

from agoranet.errors import InvalidRequestError
from agoranet.gateway.tool_buying import ToolMarket
from agoranet.payments import x402wire

__all__ = ["build"]  # the fixture of test_tool_buying.py

Build = Callable[..., object]


class FreeSeller(Seller):
    """Sells echo for nothing: answers every call (or is down)."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.behaviour == "down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"echo": json.loads(request.content)["text"]})


class OddSeller(Seller):
    """A paid seller whose answers are odd in one way (``behaviour``)."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        paid = x402wire.PAYMENT_SIGNATURE in request.headers
        if self.behaviour == "no_price" and not paid:
            self.requests.append(request)
            return httpx.Response(402, json={})
        if self.behaviour == "quote_fails" and not paid:
            self.requests.append(request)
            return httpx.Response(503, json={"error": {"message": "busy"}})
        if self.behaviour == "quote_down" and not paid:
            raise httpx.ConnectError("refused", request=request)
        if self.behaviour == "bad_payment_response" and paid:
            self.requests.append(request)
            return httpx.Response(200, json={"result": "x"},
                                  headers={x402wire.PAYMENT_RESPONSE: "%%%"})
        if self.behaviour == "down_after_payment" and paid:
            raise httpx.ReadTimeout("stalled", request=request)
        if self.behaviour == "refuses_after_payment" and paid:
            self.requests.append(request)
            return httpx.Response(400, json={"error": {"message": "'text': too long"}})
        if self.behaviour == "not_json" and paid:
            self.requests.append(request)
            self.request_id = request.headers["x-request-id"]
            return httpx.Response(200, content=b"not json",
                                  headers={x402wire.PAYMENT_RESPONSE: self._receipt(
                                      self.price if isinstance(self.price, int)
                                      else self.quote)})
        return super().handle(request)


def market_of(m: object) -> ToolMarket:
    market: ToolMarket = m.market  # type: ignore[attr-defined]
    return market


def test_a_free_tool_is_called_with_the_arguments_and_costs_nothing(build: Build) -> None:
    down, free = FreeSeller("down", 0, "down"), FreeSeller("free", 0)
    m = build(down, free, limit=10_000)
    answer = m.call("hello")  # type: ignore[attr-defined]
    assert answer["seller"] == free.root and answer["result"] == {"echo": "hello"}
    assert answer["cost"] == 0 and answer["receipt"] is None
    assert answer["tried"] == [{"seller": down.root, "error": "no answer (ConnectError)",
                                "charged": 0}]
    (request,) = free.requests
    assert str(request.url) == f"{free.root}/tools/echo"
    assert json.loads(request.content) == {"text": "hello"}
    assert request.method == "POST" and request.headers["content-type"] == "application/json"
    assert x402wire.PAYMENT_SIGNATURE not in request.headers
    assert m.budget.spent == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(("behaviour", "error"), [
    ("no_price", "its 402 carries no batch-settlement price"),
    ("quote_fails", "503: busy"),
    ("quote_down", "no answer (ConnectError)"),
])
def test_a_seller_that_quotes_no_price_is_skipped_and_says_why(
        behaviour: str, error: str, build: Build) -> None:
    odd = OddSeller("odd", {"varies": True, "max_amount": 500}, behaviour)
    good = OddSeller("zgood", {"varies": True, "max_amount": 500})
    m = build(odd, good, limit=10_000)
    answer = m.call("hi")  # type: ignore[attr-defined]
    assert answer["seller"] == good.root and answer["cost"] == good.quote
    assert answer["tried"] == [{"seller": odd.root, "error": error, "charged": 0}]
    quote = good.requests[0]  # the unpaid call that asks the price carries the arguments
    assert json.loads(quote.content) == {"text": "hi"}
    assert x402wire.PAYMENT_SIGNATURE not in quote.headers


def test_a_seller_the_channel_cannot_pay_is_skipped_blameless(build: Build) -> None:
    dear = OddSeller("dear", 200_000)  # more than the channel's deposit left
    cheap = OddSeller("zcheap", 200_000)
    m = build(dear, cheap)
    with pytest.raises(Exception, match="cannot pay: ") as failed:
        m.call()  # type: ignore[attr-defined]
    assert "every seller of the tool 'echo' failed" in str(failed.value)
    assert m.rows() == [] and m.budget.spent == 0  # type: ignore[attr-defined]
    assert not dear.requests and not cheap.requests  # nothing was sent
    for seller in (dear, cheap):  # the gateway's inability is no fault of theirs
        assert m.events(seller) == (0, 0, 0)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("behaviour", "error", "receipted"), [
    ("bad_payment_response", "receipt refused: bad payment response: ", False),
    ("down_after_payment", "no answer after payment (ReadTimeout)", False),
    ("not_json", "charged 1000 and failed (its answer is not JSON)", True),
])
def test_a_paid_call_that_goes_wrong_says_why_and_what_it_cost(
        behaviour: str, error: str, receipted: bool, build: Build) -> None:
    odd, good = OddSeller("odd", 1000, behaviour), OddSeller("zgood", 1000)
    m = build(odd, good, limit=100_000)
    answer = m.call()  # type: ignore[attr-defined]
    assert answer["seller"] == good.root
    (tried,) = answer["tried"]
    assert tried["error"].startswith(error), tried["error"]
    if not error.endswith(": "):
        assert tried["error"] == error
    rows = {r.node: r for r in m.spend.rows()}  # type: ignore[attr-defined]
    if behaviour == "down_after_payment":  # the voucher went out; no receipt came back
        assert tried["charged"] == 0
        assert (rows[odd.root].outcome, rows[odd.root].amount) == ("failed", 0)
        assert m.events(odd) == (0, 1, 0)  # type: ignore[attr-defined]
        return
    assert tried["charged"] == 1000  # the whole voucher, or what the receipt said
    assert rows[odd.root].outcome == "failed" and rows[odd.root].amount == 1000
    assert (rows[odd.root].receipt is not None) is receipted
    assert m.events(odd) == (0, 0, 1)  # type: ignore[attr-defined]
    assert m.budget.spent == 2000 and m.budget.reserved == 0  # type: ignore[attr-defined]


def test_the_sellers_400_after_payment_is_the_buyers_mistake(build: Build) -> None:
    odd = OddSeller("odd", 1000, "refuses_after_payment")
    m = build(odd, limit=10_000)
    with pytest.raises(InvalidRequestError) as refused:
        m.call()  # type: ignore[attr-defined]
    assert refused.value.param == "arguments"
    assert str(refused.value) == "the tool refused the arguments: 400: 'text': too long"
    assert m.events(odd) == (0, 0, 0) and m.budget.spent == 0  # type: ignore[attr-defined]



class EverCorrective(Seller):
    """Answers every paid call with a corrective 402 from a charged total behind ours."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        if x402wire.PAYMENT_SIGNATURE not in request.headers:
            return super().handle(request)
        self.requests.append(request)
        self.charged -= 100  # it lost a charge again
        return self._required(1000, "invalid_batch_settlement_evm_cumulative_mismatch",
                              {"channelState": {"channelId": self.channel,
                                                "chargedCumulativeAmount": str(self.charged)}})


@pytest.mark.timeout(20)
def test_a_seller_that_keeps_correcting_is_paid_again_once_then_left(build: Build) -> None:
    odd, good = EverCorrective("odd", 1000), Seller("zgood", 1000)
    m = build(odd, good, limit=100_000)
    answer = m.call()  # type: ignore[attr-defined]
    assert answer["seller"] == good.root
    assert len(odd.requests) == 2  # the first payment, and one more after following it
    (tried,) = answer["tried"]
    assert tried["seller"] == odd.root and tried["error"].startswith("402: ")
