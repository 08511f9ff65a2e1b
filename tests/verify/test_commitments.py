"""TOPLOC-style commitments: the polynomial, the wire form, and honest vs rounded weights.

Every honest configuration (greedy, seeded sampling, other torch thread counts,
several sequences at once in the scheduler) must verify; int4-rounded weights
must fail. The measured worst chunk statistics are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.hf import TransformersEngine, load_model
from agoranet.errors import AuditError
from agoranet.market import TokenPrices, cost, with_commitments, worst_case
from agoranet.proofs.commitments import (
    ALGORITHM,
    CHUNK,
    TOP_K,
    Commitments,
    expected_proofs,
    prove_chunk,
)
from agoranet.proofs.polynomial import FIELD_PRIME, evaluate, injective_modulus, interpolate
from agoranet.registry.offer import build_offer
from agoranet.testing.cheats import cheating_engine
from agoranet.tinymodel.grammar import dialogues
from agoranet.verify.commitment_audit import CommitmentResult, verify_commitments

QUESTIONS = [d[-2]["content"] for d in dialogues(12, seed=5)]


# ------------------------------------------------------------------ polynomial


def test_interpolation_passes_through_every_point() -> None:
    draw = random.Random(8)
    for _ in range(60):
        xs = draw.sample(range(10**6), draw.randint(1, 40))
        ys = [draw.randint(0, 0xFF80) for _ in xs]
        modulus = injective_modulus(xs)
        assert modulus <= FIELD_PRIME and len({x % modulus for x in xs}) == len(xs)
        coefficients = interpolate([x % modulus for x in xs], ys)
        assert len(coefficients) == len(xs) and all(0 <= c < FIELD_PRIME for c in coefficients)
        assert evaluate(coefficients, [x % modulus for x in xs]) == ys


def test_interpolation_refuses_repeated_points() -> None:
    with pytest.raises(ValueError, match="distinct"):
        interpolate([3, 3 + FIELD_PRIME], [1, 2])


def test_a_proof_is_2k_plus_2_bytes_and_survives_the_wire() -> None:
    rows = torch.randn(CHUNK, 192, generator=torch.Generator().manual_seed(0))
    proof = prove_chunk(rows)
    assert len(proof) == 2 * TOP_K + 2
    sent = Commitments((proof, prove_chunk(rows[:3])))
    assert Commitments.from_wire(sent.to_wire()) == sent
    for bad in ({"algorithm": ALGORITHM, "chunk": 32, "k": 128, "proofs": ["%%%"]},
                {"algorithm": ALGORITHM, "chunk": "32", "k": 128, "proofs": []},
                {"proofs": []}, ["not", "an", "object"]):
        with pytest.raises(AuditError):
            Commitments.from_wire(bad)


def test_proof_counts() -> None:
    assert [expected_proofs(n) for n in (1, 2, 32, 33, 34, 65, 66)] == [1, 2, 2, 2, 3, 3, 4]


# ----------------------------------------------------------------- generation


def _request(i: int, max_tokens: int = 100, **extra: Any) -> GenerationRequest:
    sampled = i % 2 == 1
    return GenerationRequest(model="tiny", messages=(Message("user", QUESTIONS[i % len(QUESTIONS)]),),
                             max_tokens=max_tokens, temperature=1.0 if sampled else 0.0,
                             seed=1000 + i if sampled else None, logprobs=True,
                             commitments=True, **extra)


async def _answer(engine: TransformersEngine, request: GenerationRequest
                  ) -> tuple[list[int], Commitments]:
    _, tokens, finish = await collect(engine.stream(await engine.prepare(request)))
    assert finish.commitments is not None
    assert len(finish.commitments.proofs) == expected_proofs(finish.completion_tokens)
    return [t.token_id or 0 for t in tokens], finish.commitments


def _report(label: str, results: list[CommitmentResult]) -> None:
    chunks = [c for r in results for c in r.checks]
    print(f"\n{label}: {sum(not r.passed for r in results)}/{len(results)} answers fail, "
          f"{len(chunks)} chunks; worst: {max(c.exponent_mismatches for c in chunks)} of "
          f"{TOP_K} sign/exponent mismatches, mantissa mean "
          f"{max(c.mantissa_mean for c in chunks):.2f}, median "
          f"{max(c.mantissa_median for c in chunks):.1f}; least mantissa mean "
          f"{min(c.mantissa_mean for c in chunks):.2f}")


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def honest(tiny_model: Path) -> Iterator[TransformersEngine]:
    """An honest engine with its own copy of the weights (the reference is another)."""
    engine = TransformersEngine(loaded=load_model(str(tiny_model)), max_active=4)
    yield engine
    asyncio.run(engine.aclose())


async def test_honest_greedy_and_sampled_answers_verify(honest: TransformersEngine,
                                                        tiny_loaded: Any) -> None:
    results = []
    for i in range(len(QUESTIONS)):
        request = _request(i, ignore_eos=i % 4 >= 2)  # some long enough for 3 decode chunks
        ids, commitments = await _answer(honest, request)
        results.append(verify_commitments(tiny_loaded, request, ids, commitments))
    _report("honest, greedy and sampled", results)
    assert all(r.passed for r in results), [r.reason for r in results]
    assert sum(len(r.checks) for r in results) >= 2 * len(QUESTIONS)


@pytest.mark.parametrize(("node_threads", "verifier_threads"), [(2, 1), (1, 2)])
async def test_other_thread_counts_verify(honest: TransformersEngine, tiny_loaded: Any,
                                          threads: None, node_threads: int,
                                          verifier_threads: int) -> None:
    results = []
    for i in range(6):
        request = _request(i)
        torch.set_num_threads(node_threads)
        ids, commitments = await _answer(honest, request)
        torch.set_num_threads(verifier_threads)
        results.append(verify_commitments(tiny_loaded, request, ids, commitments))
    _report(f"honest, node {node_threads} threads, verifier {verifier_threads}", results)
    assert all(r.passed for r in results), [r.reason for r in results]


async def test_concurrent_sequences_verify(honest: TransformersEngine, tiny_loaded: Any) -> None:
    requests = [_request(i) for i in range(8)]
    answers = await asyncio.gather(*(_answer(honest, r) for r in requests))
    results = [verify_commitments(tiny_loaded, r, ids, c)
               for r, (ids, c) in zip(requests, answers, strict=True)]
    _report("honest, 8 at once", results)
    assert all(r.passed for r in results), [r.reason for r in results]


async def test_a_one_token_answer_has_only_the_prefill_proof(honest: TransformersEngine,
                                                             tiny_loaded: Any) -> None:
    request = _request(0, max_tokens=1)
    ids, commitments = await _answer(honest, request)
    assert len(ids) == 1 and len(commitments.proofs) == 1
    assert verify_commitments(tiny_loaded, request, ids, commitments).passed


async def test_no_commitments_unless_asked(honest: TransformersEngine) -> None:
    request = GenerationRequest(model="tiny", messages=(Message("user", QUESTIONS[0]),),
                                max_tokens=5, temperature=0.0)
    _, _, finish = await collect(honest.stream(await honest.prepare(request)))
    assert finish.commitments is None


async def test_proofs_of_another_answer_or_count_fail(honest: TransformersEngine,
                                                      tiny_loaded: Any) -> None:
    first, second = _request(0), _request(2)
    ids, commitments = await _answer(honest, first)
    _, other = await _answer(honest, second)
    swapped = verify_commitments(tiny_loaded, first, ids, other)
    assert not swapped.passed
    if len(other.proofs) == len(commitments.proofs):  # same count: every chunk differs
        assert swapped.failed_chunks == len(commitments.proofs)
    short = Commitments(commitments.proofs[:-1])
    assert "expected" in (verify_commitments(tiny_loaded, first, ids, short).reason or "")
    few = Commitments(tuple(prove_chunk(torch.zeros(1, 8), k=1) for _ in commitments.proofs),
                      k=1)  # a node may not choose to commit to less
    assert "means chunk 32 and k 128" in (verify_commitments(tiny_loaded, first, ids, few).reason
                                          or "")
    # a proof with one coefficient changed no longer matches its chunk
    bad = bytearray(commitments.proofs[0])
    bad[2 + 2 * random.Random(1).randrange(TOP_K)] ^= 0x55
    tampered = Commitments((bytes(bad), *commitments.proofs[1:]))
    assert verify_commitments(tiny_loaded, first, ids, tampered).failed_chunks >= 1


@pytest.mark.parametrize("cheat", ["int4", "int8"])
async def test_rounded_weights(tiny_model: Path, tiny_loaded: Any, cheat: str) -> None:
    """int4 must fail every answer; int8's rate is only reported (it is close to honest)."""
    engine = cheating_engine(cheat, loaded=load_model(str(tiny_model)))
    try:
        results = []
        for i in range(6):
            request = _request(i)
            ids, commitments = await _answer(engine, request)
            results.append(verify_commitments(tiny_loaded, request, ids, commitments))
    finally:
        await engine.aclose()
    _report(cheat, results)
    if cheat == "int4":
        assert not any(r.passed for r in results)


# -------------------------------------------------------------- offer and price


def test_the_offer_states_commitment_terms(tiny_loaded: Any) -> None:
    offer = build_offer("transformers", [tiny_loaded.info], 100, 300, commitment_price=50)
    terms = offer.models[0].commitments
    assert terms.offered and terms.algorithm == ALGORITHM
    assert (terms.chunk, terms.k, terms.price_per_million) == (CHUNK, TOP_K, 50)
    plain = build_offer("upstream", [tiny_loaded.info.__class__("x", 512)], 100, 300)
    assert not plain.models[0].commitments.offered


def test_commitments_add_their_price_to_every_token() -> None:
    base = TokenPrices(100, 300)
    priced = with_commitments(base, 50)
    assert (priced.input_per_million, priced.output_per_million) == (150, 350)
    assert cost(priced, 1_000_000, 1_000_000) == cost(base, 1_000_000, 1_000_000) + 100
    assert cost(priced, 10, 20) <= worst_case(priced, 10, 30)
    assert with_commitments(base, 0) == base
    with pytest.raises(ValueError):
        with_commitments(base, -1)


async def test_one_reference_pass_gives_both_verdicts(honest: TransformersEngine,
                                                      tiny_loaded: Any) -> None:
    """``audit_with_commitments`` agrees with the two separate checks, for an honest answer
    and for a tampered proof, and reports missing commitments."""
    from agoranet.verify.audit import audit_answer
    from agoranet.verify.commitment_audit import audit_with_commitments

    request = _request(3, ignore_eos=True)
    _, tokens, finish = await collect(honest.stream(await honest.prepare(request)))
    ids, logprobs = [t.token_id or 0 for t in tokens], [t.logprob for t in tokens]
    assert finish.commitments is not None
    audited, proved = audit_with_commitments(tiny_loaded, request, ids, logprobs,
                                             finish.commitments)
    assert audited == audit_answer(tiny_loaded, request, ids, logprobs)
    separate = verify_commitments(tiny_loaded, request, ids, finish.commitments)
    assert proved.passed and separate.passed and len(proved.checks) == len(separate.checks)
    other = (await _answer(honest, _request(5, ignore_eos=True)))[1]  # another answer's proofs
    _, wrong = audit_with_commitments(tiny_loaded, request, ids, logprobs, other)
    assert not wrong.passed
    _, missing = audit_with_commitments(tiny_loaded, request, ids, logprobs, None)
    assert missing.reason == "no commitments returned"
