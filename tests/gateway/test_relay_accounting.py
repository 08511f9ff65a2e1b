"""What the relay charges and logs for each node of an answer, and what it asks the next
node for after a failure, against simulated nodes.

A free node is charged its price list for what it did (its usage if it says, else the
prompt's ceiling and the tokens it streamed), never more than the reservation's worst
case, with the adapter and commitment surcharges when asked for; every node that produced
something gets a spend-log row under the request's key, with its time to first token. The
next node continues the answer: the text so far as (the end of) the assistant message,
and the tokens left.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.errors import AgoranetError
from agoranet.gateway.budget import Budget
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.relay import RelayResult, new_request_id
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.payments.receipts import Receipt
from agoranet.registry.offer import AdapterTerms, CommitmentTerms, ModelOffer, Offer, Price
from fake_payers import FakePaid, Paying
from relaying import relay_into
from simnodes import BODY, Delayed, Stalling, event_stream, node, sse, token

pytestmark = pytest.mark.timeout(20)

ADAPTER = "m@adapter:" + "ab" * 32
PER_MILLION = 1_000_000  # one base unit a token


def surcharged(url: str) -> NodeState:
    """Prompt tokens cost 1 + 1 (adapter) + 3 (commitments), completion tokens 1 + 2 + 3."""
    offer = Offer(engine="sim", models=[ModelOffer(
        id="m", context_length=64, price=Price(input_per_million=PER_MILLION,
                                               output_per_million=PER_MILLION),
        adapters=AdapterTerms(accepted=True, surcharge=Price(
            input_per_million=PER_MILLION, output_per_million=2 * PER_MILLION)),
        commitments=CommitmentTerms(offered=True, price_per_million=3 * PER_MILLION))])
    return NodeState(url, offer=offer)


def frames(*events: object, done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + (b"data: [DONE]\n\n" if done else b"")


def text(word: str, **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": word}}], **extra}


STOP = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


class Run:
    """One relayed request against simulated nodes (``bodies`` by host)."""

    def __init__(self, tmp_path: Path) -> None:
        self.budget = Budget(limit=100_000)
        self.spend = SpendLog(tmp_path / "spend.sqlite")
        self.result = RelayResult("req-1", key="key-1")
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, bodies: dict[str, bytes | httpx.AsyncByteStream],
                       nodes: list[NodeState], body: dict[str, Any] | None = None,
                       policy: Policy | None = None, payers: Any = None) -> str:
        def handler(request: httpx.Request) -> httpx.Response:
            assert (request.method, request.url.path) == ("POST", "/v1/chat/completions")
            self.seen.append(json.loads(request.content))
            return event_stream(bodies[request.url.host])

        candidates = [(n, n.offer.models[0]) for n in nodes]  # type: ignore[union-attr]
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            answer = "".join([p.text async for p in relay_into(self.result, client, candidates, body or BODY, 40, 10, policy or Policy(), self.spend, payers).pieces(self.budget)])
        assert self.budget.reserved == 0
        assert self.budget.spent == self.spend.total() == self.result.amount
        return answer

    def rows(self) -> list[SpendRow]:
        return self.spend.rows("req-1")


async def test_each_node_is_charged_its_price_list_for_its_part(tmp_path: Path) -> None:
    a, b = surcharged("http://a/v1"), surcharged("http://b/v1")
    run = Run(tmp_path)
    body = {**BODY, "model": ADAPTER, "agoranet": {"unasked": True}}
    answer = await run({
        "a": frames(text("Hello", agoranet={"commitments": {"proofs": ["pa"]}}),
                    text(" there"), done=False),  # dies without usage: the ceiling counts
        "b": frames(text(" friend.", agoranet={"commitments": {"proofs": ["pb"]}}), STOP,
                    {"choices": [], "usage": {"prompt_tokens": 14, "completion_tokens": 1}}),
    }, [a, b], body, Policy(commitments=True))
    assert answer == "Hello there friend."
    assert [s["agoranet"] for s in run.seen] == [{"commitments": True}] * 2
    # a: 40 prompt tokens (the ceiling) * 5 + 2 tokens * 6; b: 14 * 5 + 1 * 6
    assert [(r.node, r.model, r.prompt_tokens, r.completion_tokens, r.amount, r.outcome,
             r.key) for r in run.rows()] == [
        (a.url, ADAPTER, 40, 2, 212, "partial", "key-1"),
        (b.url, ADAPTER, 14, 1, 76, "ok", "key-1")]
    result = run.result
    assert (result.amount, result.prompt_tokens, result.completion_tokens) == (288, 40, 3)
    assert result.nodes == [a.url, b.url] and result.failovers == 1
    assert result.commitments == [{"node": a.url, "proofs": ["pa"]},
                                  {"node": b.url, "proofs": ["pb"]}]


async def test_without_commitments_none_are_asked_for_or_charged(tmp_path: Path) -> None:
    a = surcharged("http://a/v1")
    run = Run(tmp_path)
    await run({"a": sse(["Hello"], usage=(4, 1))}, [a], {**BODY, "agoranet": {"x": 1}})
    assert "agoranet" not in run.seen[0]
    assert [r.amount for r in run.rows()] == [4 + 1] and run.result.commitments == []


async def test_a_node_claiming_more_than_the_worst_case_gets_the_worst_case(
        tmp_path: Path) -> None:
    run = Run(tmp_path)
    await run({"a": sse(["ok"], usage=(1000, 1000))}, [node("http://a/v1")])
    # the reservation: 40 prompt tokens + 8 of margin, 10 completion tokens, at 1 each
    [row] = run.rows()
    assert (row.prompt_tokens, row.completion_tokens, row.amount) == (1000, 1000, 58)


async def test_an_answer_of_usage_only_is_logged_with_no_first_token(tmp_path: Path) -> None:
    run = Run(tmp_path)
    a = node("http://a/v1")
    answer = await run({"a": frames(STOP, {"choices": [], "usage": {
        "prompt_tokens": 5, "completion_tokens": 0}})}, [a])
    assert answer == "" and a.successes == 1
    [row] = run.rows()
    assert (row.prompt_tokens, row.completion_tokens, row.amount, row.ttft_ms, row.outcome) \
        == (5, 0, 5, None, "ok")
    empty = Run(tmp_path / "empty")  # nothing at all: nothing to log or charge
    assert await empty({"a": frames(STOP)}, [node("http://a/v1")]) == ""
    assert empty.rows() == [] and empty.result.amount == 0 and empty.result.nodes == []


async def test_the_time_to_first_token_counts_from_the_request(tmp_path: Path) -> None:
    run = Run(tmp_path)
    a = node("http://a/v1")
    await run({"a": Delayed(sse(["late"], usage=(3, 1)), 0.05)}, [a])
    [row] = run.rows()
    assert row.ttft_ms is not None and 50 <= row.ttft_ms <= row.duration_ms
    assert a.ttft_ms is not None and a.ttft_ms >= 50


async def test_the_next_node_continues_the_assistant_message_within_what_is_left(
        tmp_path: Path) -> None:
    asked = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    prefilled = {"model": "m", "max_completion_tokens": 10, "continue_final_message": True,
                 "messages": [*asked, {"role": "assistant", "content": "Sure:"}]}
    run = Run(tmp_path)
    answer = await run({"a": sse([" Hello"], finish=False), "b": sse([" there."])},
                       [node("http://a/v1"), node("http://b/v1")], prefilled)
    assert answer == " Hello there."
    follow = run.seen[1]
    assert follow["messages"] == [*asked, {"role": "assistant", "content": "Sure: Hello"}]
    assert "max_completion_tokens" not in follow and follow["max_tokens"] == 9
    assert follow["continue_final_message"] is True and follow["add_generation_prompt"] is False
    assert run.seen[0]["max_completion_tokens"] == 10 and "max_tokens" not in run.seen[0]


async def test_an_earlier_assistant_turn_is_not_continued(tmp_path: Path) -> None:
    """Without ``continue_final_message`` a last assistant message is a finished turn: the
    answer so far follows it as a message of its own."""
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "again"}, {"role": "assistant", "content": "Sure."}]
    run = Run(tmp_path)
    await run({"a": sse([" Hello"], finish=False), "b": sse(["!"])},
              [node("http://a/v1"), node("http://b/v1")], {**BODY, "messages": turns})
    assert run.seen[1]["messages"] == [*turns, {"role": "assistant", "content": " Hello"}]


async def test_an_empty_prefill_and_no_limit_are_continued_as_such(tmp_path: Path) -> None:
    unlimited = {"model": "m", "continue_final_message": True,
                 "messages": [{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": None}]}
    run = Run(tmp_path)
    await run({"a": sse(["Hello"], finish=False), "b": sse(["!"])},
              [node("http://a/v1"), node("http://b/v1")], unlimited)
    follow = run.seen[1]
    assert follow["messages"][-1] == {"role": "assistant", "content": "Hello"}
    assert len(follow["messages"]) == 2
    assert "max_tokens" not in follow and "max_completion_tokens" not in follow


async def test_a_node_that_used_up_the_limit_leaves_at_least_one_token(tmp_path: Path) -> None:
    run = Run(tmp_path)
    await run({"a": sse(["a", "b"], finish=False), "b": sse(["."])},
              [node("http://a/v1"), node("http://b/v1")], {**BODY, "max_tokens": 2})
    assert run.seen[1]["max_tokens"] == 1


@pytest.mark.parametrize(("deadline", "sent", "what"), [
    ("first_token_timeout_s", [], "first token"),
    ("token_timeout_s", [token("Hello")], "next token"),
])
async def test_a_token_deadline_the_request_set_is_not_the_nodes_fault(
        deadline: str, sent: list[bytes], what: str, tmp_path: Path) -> None:
    a = node("http://a/v1")
    policy = Policy().narrowed({deadline: 0.05})
    with pytest.raises(AgoranetError) as refused:
        await Run(tmp_path)({"a": Stalling(sent)}, [a], policy=policy)
    assert getattr(refused.value, "status_code", None) == 504
    assert getattr(refused.value, "code", None) == "request_deadline"
    assert str(refused.value) == f"no {what} within the deadline this request set (0.05 s)"
    assert a.failures == 0


async def test_a_paid_request_may_cost_up_to_its_reservation(tmp_path: Path) -> None:
    paying = Paying(default=4)  # stands in for the payer: notes maxima, answers with receipts
    run = Run(tmp_path)
    await run({"a": sse(["ok"], usage=(3, 1))}, [node("http://a/v1")], payers=paying)
    assert paying.maxima == [58]  # (40 + 8) prompt + 10 completion tokens at 1 each
    [row] = run.rows()
    assert row.amount == 4 and json.loads(row.receipt or "{}")["amount"] == "4"


async def test_pieces_carry_their_node_and_logprobs_and_the_answer_its_finish(
        tmp_path: Path) -> None:
    logprobs = {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
                             "top_logprobs": []}]}
    reply = frames({"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": logprobs}]},
                   {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    spend = SpendLog(tmp_path / "spend.sqlite")
    result = RelayResult("req-1")
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return event_stream(reply)

    a = node("http://a/v1")
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        pieces = [p async for p in relay_into(result, client, [(a, a.offer.models[0])], {**BODY, "stream": False}, 40, 10, Policy(), spend).pieces(Budget(limit=1000))]
    assert [(p.text, p.node, p.logprobs, p.tool_calls) for p in pieces] == \
        [("Hi", a.url, logprobs, None)]
    assert result.finish_reason == "length"
    # nodes are always asked for a stream that ends with the usage
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}


def test_request_ids_are_openai_shaped_and_unique() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{32}", i) for i in ids)


@pytest.mark.parametrize(("running", "beyond"), [(9, 6), (None, 5)])
async def test_a_cut_paid_stream_costs_its_last_receipt_and_what_arrived_after_it(
        running: int | None, beyond: int, tmp_path: Path) -> None:
    held = None if running is None else Receipt(
        "req-1", "0x" + "ab" * 32, 3, 1, running, running, 31337, "0xnode", "0xsig")

    class Payers:
        async def paid(self, n: NodeState, max_amount: int) -> httpx.Auth | None:
            # the payer of a stream cut before its final receipt: the last running receipt
            # (if any) and what it counted for the tokens that arrived after it
            return FakePaid(max_amount, held, beyond) if n.url == "http://a/v1" else None

    a, b = node("http://a/v1"), node("http://b/v1")
    run = Run(tmp_path)
    answer = await run({"a": sse(["Hello", " there"], finish=False),
                        "b": sse([" friend."], usage=(14, 1))}, [a, b], payers=Payers())
    assert answer == "Hello there friend."
    assert [(r.node, r.amount, r.outcome, r.receipt is not None) for r in run.rows()] == [
        (a.url, running or 0, "partial", held is not None),
        (a.url, beyond, "unreceipted", False),
        (b.url, 15, "ok", False)]
    assert run.result.amount == (running or 0) + beyond + 15
    cut = run.rows()[1]  # no tokens or time of its own: what the payer counted, no more
    assert (cut.model, cut.prompt_tokens, cut.completion_tokens, cut.ttft_ms, cut.duration_ms,
            cut.key) == ("m", 0, 0, None, 0.0, "key-1")
    reason = "stream ended before the answer did" if held else \
        "a paid answer came without a receipt"
    assert a.failures == 1 and a.events[-1].split(" ", 1)[1].startswith(f"{reason} (banned ")
