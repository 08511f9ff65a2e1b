"""The reputation store: events, the score, bans that survive a restart, ranking."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.ranking import rank
from agoranet.gateway.reputation import AUDIT_BAN_S, EventKind, NodeRecord, Reputation
from agoranet.registry.offer import ModelOffer, Offer, Price
from agoranet.registry.onchain import RegistryEntry

ADDRESS = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"


def node(url: str, store: Reputation | None, price: int = 10) -> NodeState:
    offer = Offer(engine="fake", models=[ModelOffer(
        id="m", context_length=512, price=Price(input_per_million=price,
                                                output_per_million=price))])
    return NodeState(url, offer=offer, reputation=store)


def test_score_is_neutral_without_history_and_a_failed_audit_weighs_most() -> None:
    assert NodeRecord("a").score == 0.5
    laplace = NodeRecord("a", successes=3, failures=1)
    assert laplace.score == pytest.approx((3 + 1) / (3 + 1 + 2))
    passed = NodeRecord("a", successes=3, audits_passed=1)
    assert passed.score > NodeRecord("a", successes=3).score
    receipt = NodeRecord("a", successes=30, receipts=1)
    failed_audit = NodeRecord("a", successes=30, audits_failed=1)
    assert failed_audit.score < receipt.score < NodeRecord("a", successes=30, failures=1).score
    assert failed_audit.score < 0.25  # 30 successes do not outweigh one failed audit


def test_events_persist_and_a_failed_audit_bans_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "reputation.sqlite"
    store = Reputation(path)
    honest, cheat = node("http://honest/v1", store), node("http://cheat/v1", store)
    honest.record_success(10, 5, 0.1)
    honest.record_audit("m", passed=True, answers=10, flagged=0, tokens=480)
    cheat.record_success(10, 5, 0.1)
    verdict = cheat.record_audit("m", passed=False, answers=10, flagged=3, tokens=470)
    assert verdict.startswith("FAILED") and cheat.banned()
    store.close()

    store = Reputation(path)  # a gateway restart: fresh node states, the same store
    honest, cheat = node("http://honest/v1", store), node("http://cheat/v1", store)
    assert cheat.banned() and not honest.banned()
    ban = cheat.lasting_ban()
    assert ban is not None and "failed 1 audit" in ban.reason
    assert ban.until == pytest.approx(time.time() + AUDIT_BAN_S, abs=60)
    record = store.record("http://cheat/v1")
    assert (record.audits_failed, record.tokens_audited, record.answers_flagged) == (1, 470, 3)
    assert record.last_verdict == verdict and record.models == ["m"]
    assert store.record("http://honest/v1").audits_passed == 1
    assert [n.url for n, _ in rank([cheat, honest], "m", 10, 10, Policy())] == ["http://honest/v1"]
    # Once the ban has run out, the node is ranked again, far behind.
    later = time.time() + AUDIT_BAN_S + 1
    assert store.ban("http://cheat/v1", "http://cheat/v1", now=later) is None
    assert cheat.reliability < 0.05 < 0.5 < honest.reliability
    store.close()


def test_repeated_failed_audits_ban_longer(tmp_path: Path) -> None:
    store = Reputation(tmp_path / "r.sqlite")
    cheat = node("http://cheat/v1", store)
    for _ in range(3):
        cheat.record_audit("m", passed=False, answers=10, flagged=1, tokens=10)
    ban = cheat.lasting_ban()
    assert ban is not None and ban.until == pytest.approx(time.time() + 4 * AUDIT_BAN_S, abs=60)


def test_receipt_failures_are_their_own_kind_and_lower_the_rank(tmp_path: Path) -> None:
    store = Reputation(tmp_path / "r.sqlite")
    a, b = node("http://a/v1", store), node("http://b/v1", store)
    a.record_failure("ReceiptError: receipt r1 counts fewer tokens than were received", 0, 0)
    b.record_failure("_NodeFailed: HTTP 503: busy", 0, 0)
    assert store.record("http://a/v1").receipts == 1 and store.record("http://b/v1").failures == 1
    assert a.reliability < b.reliability < 0.5
    fresh = node("http://c/v1", store, price=15)  # dearer but with no history
    ranked = [n.url for n, _ in rank([a, b, fresh], "m", 10, 10, Policy(prefer="cheapest"))]
    assert ranked == ["http://b/v1", "http://c/v1", "http://a/v1"]


def test_no_history_keeps_the_plain_ranking(tmp_path: Path) -> None:
    store = Reputation(tmp_path / "r.sqlite")
    cheap, dear = node("http://cheap/v1", store, 10), node("http://dear/v1", store, 1000)
    assert cheap.reliability == dear.reliability == 0.5
    assert [n.url for n, _ in rank([dear, cheap], "m", 10, 10, Policy(prefer="cheapest"))] == [
        "http://cheap/v1", "http://dear/v1"]


def test_a_registered_node_is_known_by_its_address(tmp_path: Path) -> None:
    store = Reputation(tmp_path / "r.sqlite")
    first = node("http://old-host/v1", store)
    first.registered = RegistryEntry(ADDRESS, "http://old-host/v1", "0x" + "00" * 32, 0)
    first.record_audit("m", passed=False, answers=10, flagged=2, tokens=100)
    moved = node("http://new-host/v1", store)  # same key, new URL
    moved.registered = RegistryEntry(ADDRESS, "http://new-host/v1", "0x" + "00" * 32, 1)
    assert moved.identity == ADDRESS and moved.banned()
    assert not node("http://new-host/v1", store).banned()  # an unregistered copy is not it
    assert store.record(ADDRESS).url == "http://old-host/v1"


def test_unauditable_and_events_by_kind(tmp_path: Path) -> None:
    store = Reputation(tmp_path / "r.sqlite")
    n = node("http://a/v1", store)
    n.record_unauditable("m", "returns no token ids")
    n.record_unauditable("m", "receipt r2 went down", kind=EventKind.RECEIPT)
    record = store.record("http://a/v1")
    assert (record.unauditable, record.receipts, record.audits_failed) == (1, 1, 0)
    assert not n.banned() and record.last_verdict == "could not audit: returns no token ids"
