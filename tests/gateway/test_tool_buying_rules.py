"""The gateway's rules for buying a tool call, each checked by what it costs and says.

In process, over the in-memory sellers of test_tool_buying.py (real receipts signed with
the sellers' keys, a real budget, spend log and reputation store, no chain):

- a 402 to our voucher is paid again only when it was about the channel and the payer
  repaired something (the chain checked, or a charged total it may follow): any other
  refusal fails that seller; an answer that is not a 402 is never paid again;
- a seller the gateway cannot open a channel to is skipped, blameless, nothing spent; a
  payer that breaks still releases the call's reservation;
- a paid call's failure says exactly why and what it cost; a seller's offer that changed
  during the call is not bought from, the next seller still is;
- tools are found by name and schema hash (a 404 naming them otherwise), sellers of a
  price ranked best reputation first, banned sellers (by identity or by URL in a trusted
  list) not listed; a free call is logged too, with no tokens and how long it took.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from test_tool_buying import CHAIN_ID, SCHEMA, START, Market, Seller, build
from test_tool_exact import ExactSeller
from test_tool_exact import build as build_exact
from x402.schemas import PaymentRequired, PaymentRequirements

from agoranet.errors import CannotPayError, ModelNotFoundError, PermissionDeniedError
from agoranet.gateway import tool_buying
from agoranet.gateway.reputation import EventKind, ImportedVerdict
from agoranet.gateway.tool_directory import ToolSeller
from agoranet.gateway.tool_limits import ToolLimits
from agoranet.gateway.tool_payer import ToolPayer, ToolPayers
from agoranet.payments import x402wire
from agoranet.registry.signing import sign_offer
from agoranet.registry.tool_offer import build_tool_offer

__all__ = ["build", "build_exact"]  # the fixtures of test_tool_buying.py, test_tool_exact.py

Build = Callable[..., Market]
MISMATCH = "invalid_batch_settlement_evm_cumulative_mismatch"


class Refusing(Seller):
    """Answers a paid call with ``answer(self)`` for its first ``refusals`` paid calls,
    then as an honest seller does."""

    def __init__(self, name: str, price: int, answer: Callable[[Refusing], httpx.Response],
                 refusals: int = 1) -> None:
        super().__init__(name, price)
        self.answer = answer
        self.refusals = refusals

    def paid(self) -> list[httpx.Request]:
        return [r for r in self.requests if x402wire.PAYMENT_SIGNATURE in r.headers]

    def handle(self, request: httpx.Request) -> httpx.Response:
        if x402wire.PAYMENT_SIGNATURE in request.headers and len(self.paid()) < self.refusals:
            self.requests.append(request)
            return self.answer(self)
        return super().handle(request)

    def corrective(self, channel: str | None = None) -> dict[str, Any]:
        """A charged total behind ours for ``channel`` (ours by default): one to follow."""
        return {"channelState": {"channelId": channel or self.channel,
                                 "chargedCumulativeAmount": str(START - 1000)}}

    def required(self, error: str | None, scheme: str = "batch-settlement",
                 extra: dict[str, Any] | None = None, status: int = 402) -> httpx.Response:
        required = PaymentRequired(x402_version=2, error=error, accepts=[PaymentRequirements(
            scheme=scheme, network=f"eip155:{CHAIN_ID}", asset="0x" + "11" * 20,
            amount=str(self.price), pay_to=self.account.address, max_timeout_seconds=60,
            extra=extra if extra is not None else self.corrective())])
        return httpx.Response(status, json={"error": {"message": "refused"}},
                              headers={x402wire.PAYMENT_REQUIRED: x402wire.encode_model(required)})


def _tried_once(m: Market, bad: Refusing, good: Seller, error: str) -> None:
    answer = m.call()
    assert answer["seller"] == good.root and answer["cost"] == 1000
    assert answer["tried"] == [{"seller": bad.root, "error": error, "charged": 0}]
    assert len(bad.paid()) == 1  # not paid again
    assert m.rows() == [(bad.root, "failed", 0, "agent"), (good.root, "ok", 1000, "agent")]
    assert (m.budget.spent, m.budget.reserved) == (1000, 0)
    assert m.events(bad) == (0, 1, 0)


@pytest.mark.parametrize("refusal", [
    "no_header", "unreadable_header", "exact_only", "other_error", "no_error",
    "other_channel"])
def test_a_402_that_is_not_about_our_channel_is_not_paid_again(refusal: str,
                                                              build: Build) -> None:
    """Each 402 below carries a charged total the payer could follow (where it carries
    one at all), but says nothing that makes paying again worth it."""
    answers: dict[str, Callable[[Refusing], httpx.Response]] = {
        "no_header": lambda s: httpx.Response(402, json={"error": {"message": "refused"}}),
        "unreadable_header": lambda s: httpx.Response(
            402, json={"error": {"message": "refused"}},
            headers={x402wire.PAYMENT_REQUIRED: "%%%"}),
        "exact_only": lambda s: s.required(MISMATCH, scheme="exact"),
        "other_error": lambda s: s.required("invalid_batch_settlement_evm_signature"),
        "no_error": lambda s: s.required(None),
        "other_channel": lambda s: s.required(MISMATCH, extra=s.corrective("0x" + "ee" * 32)),
    }
    bad, good = Refusing("bad", 1000, answers[refusal]), Seller("good", 1000)
    m = build(bad, good, limit=10_000)
    _tried_once(m, bad, good, "402: refused")


def test_only_a_402_is_paid_again(build: Build) -> None:
    """A failed answer that also carries a payment-required header is a failure, even
    when the header names a charged total the payer could follow."""
    odd = Refusing("bad", 1000, lambda s: s.required(MISMATCH, status=503))
    good = Seller("good", 1000)
    m = build(odd, good, limit=10_000)
    _tried_once(m, odd, good, "503: refused")


@pytest.mark.parametrize("repair", ["opened a new channel", None])
def test_a_channel_state_402_is_paid_again_only_after_a_repair(
        repair: str | None, build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    """"Channel not found" is checked on chain: paid again if the payer repaired the
    channel, failed over if chain and store agree (no chain here: the check's verdict is
    set by hand)."""
    checked: list[ToolPayer] = []

    def reconcile(self: ToolPayer, *, unreadable_ok: bool = False) -> str | None:
        checked.append(self)
        return repair
    monkeypatch.setattr(ToolPayer, "reconcile", reconcile)
    bad = Refusing("bad", 1000, lambda s: s.required(
        "invalid_batch_settlement_evm_channel_not_found", extra={}))
    good = Seller("good", 1000)
    m = build(bad, good, limit=10_000)
    if repair is None:
        _tried_once(m, bad, good, "402: refused")
    else:
        answer = m.call()
        assert answer["seller"] == bad.root and answer["tried"] == []
        assert len(bad.paid()) == 2 and not good.requests
        assert m.rows() == [(bad.root, "ok", 1000, "agent")]
    assert len(checked) == 1


def test_a_charge_dispute_is_not_paid_again(build: Build) -> None:
    """Its corrective 402 claims more than our receipts: the dispute is counted (see
    test_tool_buying.py), and the seller is failed, not paid again."""
    cheat, good = Seller("cheat", 900, "overclaims"), Seller("good", 1000)
    m = build(cheat, good, limit=100_000)
    answer = m.call()
    assert answer["tried"] == [{"seller": cheat.root, "error": "402: {}", "charged": 0}]
    assert len([r for r in cheat.requests if x402wire.PAYMENT_SIGNATURE in r.headers]) == 1
    assert m.events(cheat) == (0, 1, 1)  # the failed call, and the dispute


def test_a_seller_the_gateway_cannot_open_a_channel_to_is_skipped_blameless(
        build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    unpayable, good = Seller("a", 1000), Seller("b", 1000)
    m = build(unpayable, good, limit=10_000)
    take = m.payers.take

    async def payer(seller: ToolSeller) -> ToolPayer:
        if seller.root == unpayable.root:
            raise CannotPayError("the chain cannot be read")
        return await take(seller)
    monkeypatch.setattr(m.payers, "take", payer)
    answer = m.call()
    assert answer["seller"] == good.root
    assert answer["tried"] == [{"seller": unpayable.root, "charged": 0,
                                "error": "cannot pay this seller: the chain cannot be read"}]
    assert not unpayable.requests
    assert m.rows() == [(good.root, "ok", 1000, "agent")]
    assert (m.budget.spent, m.budget.reserved) == (1000, 0)
    assert m.events(unpayable) == (0, 0, 0)


def test_a_payer_that_breaks_still_releases_the_reservation(
        build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    seller = Seller("a", 1000)
    m = build(seller, limit=10_000)

    async def payer(seller: ToolSeller) -> ToolPayer:
        raise RuntimeError("a bug")
    monkeypatch.setattr(m.payers, "take", payer)
    with pytest.raises(RuntimeError, match="a bug"):
        m.call()
    assert (m.budget.spent, m.budget.reserved) == (0, 0)


def test_an_exact_seller_is_sent_the_arguments(build_exact: Any) -> None:
    seller = ExactSeller("s")
    sent: list[httpx.Request] = []
    handle = seller.handle

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return handle(request)
    seller.handle = record  # type: ignore[method-assign]
    m = build_exact(seller)
    assert m.call()["cost"] == 1000
    assert [json.loads(r.content) for r in sent] == [{"text": "hi"}, {"text": "hi"}]


@pytest.mark.parametrize(("behaviour", "error", "charged"), [
    ("no_receipt", "it answered a paid call without a receipt", 900),
    ("charges_and_fails", "charged 900 and failed (500: crashed)", 900),
])
def test_a_paid_failure_says_exactly_why_and_what_it_cost(
        behaviour: str, error: str, charged: int, build: Build) -> None:
    bad, good = Seller("bad", 900, behaviour), Seller("good", 1000)
    m = build(bad, good, limit=10_000)
    answer = m.call()
    assert answer["tried"] == [{"seller": bad.root, "error": error, "charged": charged}]
    assert m.budget.spent == charged + 1000
    assert m.events(bad) == (0, 0, 1)


class Overcharging(Seller):
    """Its receipt is for one unit more than the price."""

    def _receipt(self, amount: int) -> str:
        return super()._receipt(amount + 1)


def test_a_receipt_the_payer_refuses_is_named_and_counts_the_voucher(build: Build) -> None:
    cheat, good = Overcharging("cheat", 900), Seller("good", 1000)
    m = build(cheat, good, limit=10_000)
    answer = m.call()
    (tried,) = answer["tried"]
    assert tried["error"] == \
        f"receipt refused: receipt {answer['id']} charges more than the voucher allowed"
    assert tried["charged"] == 900  # the voucher: what the seller can claim
    assert m.budget.spent == 1900 and m.events(cheat) == (0, 0, 1)


def _offer(seller: Seller, schema: dict[str, Any]) -> Any:
    terms = seller.offer().payment
    return sign_offer(build_tool_offer(seller.root, [
        {"name": "echo", "description": "", "input_schema": schema, "price": seller.price}],
        terms), seller.account)


OTHER_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"},
                                                 "lang": {"type": "string"}}}


def test_a_tool_is_found_by_name_and_schema_or_a_404_names_them(build: Build) -> None:
    one, two, other = Seller("one", 1000), Seller("two", 1000), Seller("other", 1000)
    m = build(one, two, other, limit=10_000)
    m.market.directory.sellers[other.root].offer = _offer(other, OTHER_SCHEMA)
    common = one.offer().tools[0].schema_sha256
    rare = m.market.directory.sellers[other.root].offer.tools[0].schema_sha256
    assert m.market.find("echo").schema_sha256 == common  # the one most sellers sell
    assert m.market.find("echo", rare).schema_sha256 == rare
    assert m.market.find("echo", common).schema_sha256 == common
    answer = asyncio.run(m.market.call("echo", {"text": "hi"}, schema_sha256=rare))
    assert answer["seller"] == other.root and answer["schema_sha256"] == rare
    with pytest.raises(ModelNotFoundError) as missing:
        m.market.find("nope")
    assert str(missing.value) == "no seller on the network offers the tool 'nope'"
    assert missing.value.param == "name"
    unknown = "ab" * 32
    with pytest.raises(ModelNotFoundError) as missing:
        asyncio.run(m.market.call("echo", {"text": "hi"}, schema_sha256=unknown))
    assert str(missing.value) == \
        "no seller on the network offers the tool 'echo' with schema abababababab…"
    assert missing.value.param == "name"
    assert m.rows() == [(other.root, "ok", 1000, None)]


def test_an_offer_changed_during_the_call_is_not_bought_from(build: Build) -> None:
    """The first seller fails; meanwhile the second changed its tool's schema: it is
    skipped, and the third, still selling what was listed, answers."""
    first = Seller("a", 1000, "fails")
    changed, third = Seller("b", 1000), Seller("c", 1000)
    m = build(first, changed, third, limit=10_000)
    handle = first.handle

    def fail_and_change(request: httpx.Request) -> httpx.Response:
        m.market.directory.sellers[changed.root].offer = _offer(changed, OTHER_SCHEMA)
        return handle(request)
    first.handle = fail_and_change  # type: ignore[method-assign]
    answer = m.call()
    assert answer["seller"] == third.root
    assert [t["seller"] for t in answer["tried"]] == [first.root]
    assert not changed.requests
    assert m.budget.spent == 1000


def test_sellers_of_one_price_are_ranked_best_reputation_first(build: Build) -> None:
    worse, better = Seller("a", 1000), Seller("b", 1000)
    m = build(worse, better)
    m.reputation.add(worse.account.address, worse.root, EventKind.FAILURE)
    (listing,) = m.market.listing()
    assert [s.root for s, _ in listing.sellers] == [better.root, worse.root]


def test_without_a_reputation_store_every_seller_scores_neutral(build: Build) -> None:
    seller = Seller("a", 1000)
    m = build(seller)
    m.market.reputation = None
    (shown,) = m.market.view()
    assert [s["score"] for s in shown["sellers"]] == [0.5]


def test_a_seller_banned_by_url_in_a_trusted_list_is_not_listed(build: Build) -> None:
    banned, good = Seller("a", 1000), Seller("b", 1000)
    m = build(banned, good)
    signer = "0x" + "55" * 20
    m.reputation.import_verdicts(signer, int(time.time()), [ImportedVerdict(
        signer, "0x" + "66" * 20, banned.root, 1, time.time() + 3600, "served other weights",
        {})])
    assert [s.root for g in m.market.listing() for s, _ in g.sellers] == [good.root]


def test_a_free_call_is_logged_with_no_tokens_and_its_duration(
        build: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    free_root = "http://free.test"
    m = build(limit=10_000)

    class Free(Seller):
        def handle(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"echo": "hi"})
    free = Free("free", 0)
    m.sellers[free_root] = free
    m.market.directory.add(free_root).offer = build_tool_offer(free_root, [
        {"name": "echo", "description": "", "input_schema": SCHEMA, "price": 0}])
    clock = iter([100.0, 100.25])  # the call's start and end, in seconds
    monkeypatch.setattr(tool_buying, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    answer = m.call()
    assert answer["cost"] == 0 and answer["seller"] == free_root
    (row,) = m.spend.rows()
    assert (row.model, row.node, row.outcome, row.amount, row.key) == \
        ("tool:echo", free_root, "ok", 0, "agent")
    assert (row.prompt_tokens, row.completion_tokens, row.ttft_ms) == (0, 0, None)
    assert row.duration_ms == 250.0


def test_a_keys_view_names_each_tool_it_may_buy(build: Build) -> None:
    seller = Seller("a", 1000)
    m = build(seller)
    (shown,) = m.market.view(ToolLimits("agent", (("echo",),)))
    assert (shown["name"], shown["schema_sha256"]) == \
        ("echo", seller.offer().tools[0].schema_sha256)
    assert [s["url"] for s in shown["sellers"]] == [seller.root]


def test_a_key_that_may_pay_no_seller_is_told_which_tool(build: Build) -> None:
    seller = Seller("a", 1000)
    m = build(seller, limit=10_000)
    limits = ToolLimits("agent", sellers=(("http://other.test",),))
    with pytest.raises(PermissionDeniedError) as refused:
        asyncio.run(m.market.call("echo", {"text": "hi"}, limits=limits))
    assert str(refused.value) == ("the key 'agent' may pay none of the sellers of the tool "
                                  "'echo' (its policy's 'tool_sellers')")
    assert not seller.requests and m.budget.spent == 0


def test_a_channel_given_back_pays_the_next_call(build: Build) -> None:
    seller = Seller("a", 1000)
    m = build(seller, limit=10_000)
    first, second = m.call(), m.call()
    assert (first["cost"], second["cost"]) == (1000, 1000)
    (payer,) = m.payers.payers()  # one channel, paid twice
    assert payer.state is not None and payer.state.charged == START + 2000


def test_the_market_cancels_an_unanswered_exact_transfer_through_its_payers(
        build_exact: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's ExactBuyer is given the payers' cancel: a transfer whose seller never
    answered is cancelled, and costs nothing (tests/gateway/test_tool_exact_cancel.py)."""
    asked: list[str] = []

    async def cancel_exact(self: ToolPayers, nonce: str) -> bool:
        asked.append(nonce)
        return True
    monkeypatch.setattr(ToolPayers, "cancel_exact", cancel_exact)
    silent, good = ExactSeller("a", "down"), ExactSeller("b")
    m = build_exact(silent, good)
    answer = m.call()
    assert answer["seller"] == good.root
    assert asked == [silent.paid[0]["nonce"]]
    assert answer["tried"][0]["charged"] == 0
    assert (m.budget.spent, m.budget.reserved) == (1000, 0)
