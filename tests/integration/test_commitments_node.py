"""Commitments from a real ``agoranet node`` process, asked through the ``openai`` client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from agoranet.engines.base import GenerationRequest, Message
from agoranet.proofs.commitments import ALGORITHM, CHUNK, TOP_K, expected_proofs
from agoranet.verify.commitment_audit import commitments_in, verify_commitments
from agoranet.verify.node_audit import audit_node
from helpers import node_process

pytestmark = pytest.mark.slow

QUESTION = "What did Nora do yesterday?"
ASK = {"agoranet": {"commitments": True}}


@pytest.fixture(scope="module")
def client(tiny_node: str) -> OpenAI:
    return OpenAI(base_url=tiny_node, api_key="unused", max_retries=0)


def _request(max_tokens: int, seed: int | None) -> GenerationRequest:
    return GenerationRequest(model="tiny", messages=(Message("user", QUESTION),),
                             max_tokens=max_tokens, temperature=0.0 if seed is None else 1.0,
                             seed=seed, ignore_eos=True)


def _create(client: OpenAI, request: GenerationRequest, **extra: Any) -> Any:
    return client.chat.completions.create(  # type: ignore[call-overload]
        model="tiny", messages=[{"role": "user", "content": QUESTION}],
        max_tokens=request.max_tokens, temperature=request.temperature, seed=request.seed,
        logprobs=True, extra_body={**ASK, "ignore_eos": True}, **extra)


def test_the_offer_has_commitments(tiny_node: str) -> None:
    offer = httpx.get(f"{tiny_node.removesuffix('/v1')}/.well-known/agoranet").json()
    terms = offer["models"][0]["commitments"]
    assert terms["offered"] and terms["algorithm"] == ALGORITHM
    assert (terms["chunk"], terms["k"]) == (CHUNK, TOP_K)


def test_not_streamed(client: OpenAI, tiny_loaded: Any) -> None:
    request = _request(70, seed=None)
    reply = _create(client, request)
    found = commitments_in(reply.model_dump())
    assert found is not None and found.algorithm == ALGORITHM
    assert len(found.proofs) == expected_proofs(70) == 4
    assert all(len(p) == 2 * TOP_K + 2 for p in found.proofs)
    ids = [int((e.model_extra or {})["token_id"]) for e in reply.choices[0].logprobs.content]
    assert verify_commitments(tiny_loaded, request, ids, found).passed
    plain = client.chat.completions.create(model="tiny", max_tokens=5,
                                           messages=[{"role": "user", "content": QUESTION}])
    assert "agoranet" not in plain.model_dump(exclude_none=True)


def test_streamed_before_the_usage(client: OpenAI, tiny_loaded: Any) -> None:
    request = _request(40, seed=7)
    chunks = list(_create(client, request, stream=True, stream_options={"include_usage": True}))
    kinds = []
    ids: list[int] = []
    found = None
    for chunk in chunks:
        data = chunk.model_dump()
        if commitments_in(data) is not None:
            kinds.append("commitments")
            found = commitments_in(data)
        elif chunk.usage is not None:
            kinds.append("usage")
        elif chunk.choices and chunk.choices[0].finish_reason:
            kinds.append("finish")
        for choice in chunk.choices:
            for entry in (choice.logprobs.content if choice.logprobs else None) or []:
                ids.append(int((entry.model_extra or {})["token_id"]))
    assert kinds == ["finish", "commitments", "usage"]
    assert found is not None and len(ids) == 40
    assert verify_commitments(tiny_loaded, request, ids, found).passed


def test_completions_carry_them_too(tiny_node: str) -> None:
    body = {"model": "tiny", "prompt": "<|user|>\nHi!<|end|>\n<|assistant|>\n", "max_tokens": 5,
            **ASK}
    reply = httpx.post(f"{tiny_node}/completions", json=body, timeout=60).json()
    found = commitments_in(reply)
    assert found is not None and len(found.proofs) == expected_proofs(
        reply["usage"]["completion_tokens"])


@pytest.mark.parametrize("value", [{"commitments": "yes"}, {"commitments": 1},
                                   {"commitment": True}, "commitments"])
def test_a_bad_value_is_a_400_in_openai_shape(client: OpenAI, value: object) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", max_tokens=3, extra_body={"agoranet": value},
                                       messages=[{"role": "user", "content": QUESTION}])
    assert caught.value.status_code == 400
    error = caught.value.response.json()["error"]
    assert error["type"] == "invalid_request_error" and "agoranet" in error["param"]


def test_the_audit_asks_for_and_checks_them(tiny_node: str, tiny_loaded: Any) -> None:
    audit = audit_node(tiny_node, "tiny", tiny_loaded, max_tokens=40)
    assert audit.passed and len(audit.commitment_results) == len(audit.results)
    assert all(r.passed and r.checks for r in audit.commitment_results)
    skipped = audit_node(tiny_node, "tiny", tiny_loaded, max_tokens=8, commitments=False)
    assert skipped.passed and not skipped.commitment_results


@pytest.fixture(scope="module")
def upstream_front(tiny_node: str) -> Iterator[str]:
    with node_process(["--engine", "upstream", "--upstream-url", tiny_node, "--free"]) as url:
        yield url


def test_an_engine_without_hidden_states_refuses_them(upstream_front: str) -> None:
    offer = httpx.get(f"{upstream_front.removesuffix('/v1')}/.well-known/agoranet").json()
    assert not offer["models"][0]["commitments"]["offered"]
    client = OpenAI(base_url=upstream_front, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", max_tokens=3, extra_body=ASK,
                                       messages=[{"role": "user", "content": QUESTION}])
    error = caught.value.response.json()["error"]
    assert error["param"] == "agoranet.commitments" and "cannot return commitments" in (
        error["message"]), json.dumps(error)
