"""Text completions at the gateway: the request's checks (400s naming the field), the
relay over simulated nodes (failover with the prompt continued, malformed events failing
the node, logprobs with their offsets moved), and logprobs of a token without text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.errors import InvalidRequestError
from agoranet.gateway.budget import Budget
from agoranet.gateway.completions_wire import COMPLETIONS, logprobs_ok, plan_completion
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.relay import Relay, RelayResult
from agoranet.gateway.spendlog import SpendLog
from agoranet.registry.offer import ModelOffer, Offer, Price

BASE: dict[str, Any] = {"model": "m", "prompt": "Once"}


@pytest.mark.parametrize(("extra", "param", "words"), [
    ({"n": 2}, "n", "one completion per request"),
    ({"best_of": 2}, "best_of", "one completion per request"),
    ({"n": 0}, "n", "positive integer"),
    ({"suffix": "end"}, "suffix", "suffix"),
    ({"presence_penalty": 0.1}, "presence_penalty", "not supported"),
    ({"frequency_penalty": -1}, "frequency_penalty", "not supported"),
    ({"frequency_penalty": "x"}, "frequency_penalty", "number"),
    ({"logit_bias": {"1": 2}}, "logit_bias", "not supported"),
    ({"logit_bias": [1]}, "logit_bias", "object"),
    ({"echo": True, "logprobs": 0}, "echo", "echo with logprobs"),
    ({"echo": "yes"}, "echo", "boolean"),
    ({"prompt": ["a", "b"]}, "prompt", "one prompt per request"),
    ({"prompt": [[1, 2]]}, "prompt", "token ids"),
    ({"prompt": [1, 2]}, "prompt", "token ids"),
    ({"prompt": None}, "prompt", "required"),
    ({"prompt": {"a": 1}}, "prompt", "string"),
    ({"frobnicate": 1}, "frobnicate", "unknown field"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "stream"),
])
def test_what_the_network_does_not_do_is_refused_by_name(
        extra: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        plan_completion({**BASE, **extra})
    assert caught.value.param == param and words in caught.value.message


def test_the_nodes_own_checks_come_first_as_a_400() -> None:
    from pydantic import ValidationError

    for bad in ({"logprobs": 6}, {"temperature": 3}, {"max_tokens": 0}, {"stream": "yes"}):
        with pytest.raises(ValidationError):
            plan_completion({**BASE, **bad})


def test_a_request_becomes_the_nodes_request() -> None:
    plan = plan_completion({**BASE, "prompt": ["Once"], "n": 1, "best_of": 1, "suffix": "",
                            "echo": True, "presence_penalty": 0, "logit_bias": {},
                            "temperature": 0, "stop": ["."], "seed": 3, "stream": True,
                            "stream_options": {"include_usage": True},
                            "agoranet": {"prefer": "cheapest"}})
    assert plan.body == {"model": "m", "prompt": "Once", "temperature": 0, "stop": ["."],
                         "seed": 3, "max_tokens": 16}  # OpenAI's default max_tokens
    assert plan.stream and plan.include_usage and plan.echo and plan.max_tokens == 16
    assert plan.needs.capabilities == frozenset()
    wants = plan_completion({**BASE, "logprobs": 2, "max_tokens": None})
    assert wants.needs.capabilities == {"logprobs"} and wants.needs.param("logprobs") == \
        "logprobs"
    assert wants.max_tokens is None and "max_tokens" not in wants.body  # the context's


def test_a_continuation_is_the_prompt_and_the_text_so_far() -> None:
    body = {"model": "m", "prompt": "Once", "max_tokens": 10, "logprobs": 1}
    assert COMPLETIONS.continuation(body, "", 0) is body
    assert COMPLETIONS.continuation(body, " upon a", 2) == {
        "model": "m", "prompt": "Once upon a", "max_tokens": 8, "logprobs": 1}
    assert COMPLETIONS.continuation(body, " x" * 20, 20)["max_tokens"] == 1


def test_a_completion_event_reads_as_a_chat_chunk() -> None:
    lp = {"tokens": ["a"], "token_logprobs": [-0.5], "top_logprobs": [{"a": -0.5}],
          "text_offset": [0]}
    event = {"id": "x", "choices": [{"index": 0, "text": "a", "logprobs": lp,
                                     "finish_reason": None}]}
    assert COMPLETIONS.as_chat_chunk(event)["choices"] == [
        {"index": 0, "delta": {"content": "a"}, "logprobs": lp, "finish_reason": None}]
    assert COMPLETIONS.as_chat_chunk({"choices": "no"}) == {"choices": "no"}
    assert COMPLETIONS.as_chat_chunk({"choices": [3]}) == {"choices": [3]}
    wrong = {**lp, "text_offset": ["0"]}
    chunk = COMPLETIONS.as_chat_chunk({"choices": [{"text": "a", "logprobs": wrong}]})
    assert not isinstance(chunk["choices"][0]["logprobs"], dict)  # the relay fails it


@pytest.mark.parametrize("logprobs", [
    {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [], "text_offset": [0]},
    {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []},
    {"tokens": ["a"], "token_logprobs": [None], "top_logprobs": [None], "text_offset": [3]},
])
def test_logprobs_of_the_completions_shape(logprobs: dict[str, Any]) -> None:
    assert logprobs_ok(logprobs)


@pytest.mark.parametrize("logprobs", [
    [], {"tokens": "a"}, {"tokens": ["a"], "token_logprobs": [], "text_offset": [0]},
    {"tokens": [1], "token_logprobs": [-1.0], "text_offset": [0]},
    {"tokens": ["a"], "token_logprobs": [True], "text_offset": [0]},
    {"tokens": ["a"], "token_logprobs": [-1.0], "text_offset": [0.5]},
    {"tokens": ["a"], "token_logprobs": [-1.0], "text_offset": [0],
     "top_logprobs": [{"a": "x"}]},
    {"tokens": ["a"], "token_logprobs": [-1.0], "text_offset": [0], "top_logprobs": [{}, {}]},
])
def test_logprobs_of_another_shape(logprobs: Any) -> None:
    assert not logprobs_ok(logprobs)


# ---------------------------------------------------------------- relayed


def _node(url: str) -> NodeState:
    offer = Offer(engine="sim", models=[ModelOffer(
        id="m", context_length=64, price=Price(input_per_million=1_000_000,
                                               output_per_million=1_000_000))])
    return NodeState(url, offer=offer)


def _lp(words: list[str]) -> dict[str, Any]:
    offsets = [sum(len(w) for w in words[:i]) for i in range(len(words))]
    return {"tokens": words, "token_logprobs": [-0.1] * len(words),
            "top_logprobs": [{w: -0.1} for w in words], "text_offset": offsets}


def _stream(frames: list[dict[str, Any]], done: bool = True) -> httpx.Response:
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    return httpx.Response(200, content=body + (b"data: [DONE]\n\n" if done else b""),
                          headers={"content-type": "text/event-stream"})


def _text(word: str, offset: int) -> dict[str, Any]:
    lp = _lp([word])
    lp["text_offset"] = [offset]
    return {"object": "text_completion", "choices": [{"index": 0, "text": word,
                                                      "logprobs": lp}]}


FINISH = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}


async def _relay(handler: Any, tmp_path: Path, body: dict[str, Any]
                 ) -> tuple[list[Any], RelayResult, SpendLog]:
    spend = SpendLog(tmp_path / "spend.sqlite")
    nodes = [_node("http://a/v1"), _node("http://b/v1")]
    candidates = [(n, n.offer.models[0]) for n in nodes]  # type: ignore[union-attr]
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        relay = Relay(client, candidates, body, 40, 10, Policy(), spend, request_id="cmpl-1",
                      wire=COMPLETIONS)
        result = relay.result
        pieces = [p async for p in relay.pieces(Budget(limit=1000))]
    return pieces, result, spend


async def test_a_completion_cut_mid_answer_goes_on_from_the_prompt_and_text(
        tmp_path: Path) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        if request.url.host == "a":
            return _stream([_text("Once", 0), _text(" upon", 4)], done=False)
        return _stream([_text(" a", 0), _text(" time", 2), FINISH,
                        {"choices": [], "usage": {"prompt_tokens": 3,
                                                  "completion_tokens": 2}}])

    pieces, result, spend = await _relay(handler, tmp_path, {
        "model": "m", "prompt": "Say:", "max_tokens": 10, "logprobs": 1})
    assert "".join(p.text for p in pieces) == "Once upon a time"
    assert [path for path, _ in seen] == ["/v1/completions", "/v1/completions"]
    assert seen[1][1]["prompt"] == "Say:Once upon" and seen[1][1]["max_tokens"] == 8
    assert seen[1][1]["stream"] is True
    assert [p.logprobs["tokens"] for p in pieces if p.logprobs] == [  # type: ignore[index]
        ["Once"], [" upon"], [" a"], [" time"]]
    assert result.finish_reason == "length" and result.failovers == 1
    assert [r.outcome for r in spend.rows("cmpl-1")] == ["partial", "ok"]


async def test_a_completion_event_of_the_wrong_shape_fails_the_node(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            return _stream([{"choices": [{"index": 0, "text": 5}]}])
        return _stream([_text("ok", 0), FINISH])

    pieces, result, _ = await _relay(handler, tmp_path, {"model": "m", "prompt": "x",
                                                         "max_tokens": 10})
    assert "".join(p.text for p in pieces) == "ok" and result.nodes == ["http://b/v1"]


async def test_the_logprobs_of_a_token_without_text_are_relayed(tmp_path: Path) -> None:
    """The end token has logprobs but no text: a chat answer's last logprobs reached the
    client neither plain nor streamed before (regression)."""
    end = {"content": [{"token": "<|end|>", "logprob": -0.2, "top_logprobs": []}]}

    def handler(request: httpx.Request) -> httpx.Response:
        return _stream([
            {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": {
                "content": [{"token": "Hi", "logprob": -0.1, "top_logprobs": []}]}}]},
            {"choices": [{"index": 0, "delta": {"content": ""}, "logprobs": end}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}])

    spend = SpendLog(tmp_path / "spend.sqlite")
    node = _node("http://a/v1")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        relay = Relay(client, [(node, node.offer.models[0])],  # type: ignore[union-attr]
                      {"model": "m", "messages": [{"role": "user", "content": "x"}],
                       "logprobs": True, "max_tokens": 5}, 40, 5, Policy(), spend,
                      request_id="req-1")
        result = relay.result
        pieces = [p async for p in relay.pieces(Budget(limit=1000))]
    assert [p.text for p in pieces] == ["Hi", ""]
    assert pieces[1].logprobs == end
    # each piece names its node (a completion's text offsets are moved per node)
    assert [p.node for p in pieces] == ["http://a/v1", "http://a/v1"]
    assert result.completion_tokens == 1  # a token count only from text, as before
