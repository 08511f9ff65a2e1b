"""Audits read the node's offer: seeded challenges only for a sampler the auditor replays."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from agoranet.engines.sampling import SAMPLER_ID
from agoranet.proofs.commitments import ALGORITHM
from agoranet.verify.node_audit import PER_ROUND, audit_node, challenges
from agoranet.verify.offer_terms import OfferTerms, offer_terms

NODE = "http://node.test/v1"


def _offer(**entry: Any) -> dict[str, Any]:
    return {"models": [{"id": "tiny", **entry}]}


class FakeNode:
    """An offer and an answer with no tokens; records each challenge's body."""

    def __init__(self, offer: Any, status: int = 200) -> None:
        self.offer, self.status = offer, status
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/agoranet":
            return httpx.Response(self.status, json=self.offer)
        self.bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [{
            "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ""},
            "logprobs": {"content": []}}]})

    def terms(self) -> OfferTerms:
        with httpx.Client(transport=httpx.MockTransport(self)) as http:
            return offer_terms(http, NODE, "tiny@adapter:x")


@pytest.mark.parametrize(("offer", "status", "expected"), [
    (_offer(sampler=SAMPLER_ID), 200, OfferTerms(sampler=SAMPLER_ID)),
    (_offer(sampler=None), 200, OfferTerms()),
    (_offer(sampler=7), 200, OfferTerms()),  # not a name
    (_offer(sampler="vllm-own-kernels"), 200, OfferTerms(sampler="vllm-own-kernels")),
    (_offer(commitments={"offered": True, "algorithm": ALGORITHM}), 200,
     OfferTerms(commitments=True)),
    (_offer(commitments={"offered": True, "algorithm": "other"}), 200, OfferTerms()),
    (_offer(commitments="yes"), 200, OfferTerms()),
    ({"models": [{"id": "other", "sampler": SAMPLER_ID}]}, 200, OfferTerms()),
    ({"error": "none"}, 404, OfferTerms()),  # a plain OpenAI server: no offer
    ([1, 2], 200, OfferTerms()),
])
def test_offer_terms_read_the_base_models_entry(offer: Any, status: int,
                                                expected: OfferTerms) -> None:
    assert FakeNode(offer, status).terms() == expected


def test_only_our_sampler_is_replayable() -> None:
    assert OfferTerms(sampler=SAMPLER_ID).seeded_replayable
    assert not OfferTerms(sampler="vllm-own-kernels").seeded_replayable
    assert not OfferTerms().seeded_replayable


def test_greedy_only_challenges_carry_no_seed() -> None:
    drawn = challenges(6, "tiny", seeded=False)
    assert [(c.temperature, c.seed) for c in drawn] == [(0.0, None)] * 6
    mixed = challenges(6, "tiny")
    assert [c.temperature for c in mixed] == [0.0, 1.0] * 3
    assert all(c.seed is not None for c in mixed[1::2])


@pytest.mark.parametrize(("sampler", "sampled"), [(SAMPLER_ID, PER_ROUND // 2),
                                                  (None, 0), ("vllm-own-kernels", 0)])
def test_audit_asks_seeded_challenges_only_of_a_replayable_sampler(
        tiny_loaded: Any, sampler: str | None, sampled: int) -> None:
    node = FakeNode(_offer(sampler=sampler))
    with httpx.Client(transport=httpx.MockTransport(node)) as http:
        audit = audit_node(NODE, "tiny", tiny_loaded, client=http)
    assert len(node.bodies) == PER_ROUND
    assert sum(1 for b in node.bodies if b.get("seed") is not None) == sampled
    assert sum(1 for b in node.bodies if b["temperature"] > 0) == sampled
    assert audit.seeded is (sampled > 0)
