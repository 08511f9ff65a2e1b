"""The Responses API over chat completions, without a network: the request as a chat
body, a chat answer as a response object and as Responses stream events, the store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agoranet.errors import InvalidRequestError
from agoranet.gateway.response_store import (
    ResponseNotFoundError,
    ResponseStore,
    StoredResponse,
)
from agoranet.gateway.responses_output import ResponseDraft, stream_events
from agoranet.gateway.responses_request import to_chat

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}


def test_instructions_items_and_a_function_round_trip_become_chat_messages() -> None:
    plan = to_chat({
        "model": "tiny", "instructions": "Be brief.", "max_output_tokens": 20,
        "temperature": 0, "tools": [WEATHER], "tool_choice": {"type": "function",
                                                              "name": "get_weather"},
        "input": [
            {"role": "developer", "content": "Use celsius."},
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Weather in "},
                         {"type": "input_text", "text": "Oslo?"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather",
             "arguments": '{"city":"Oslo"}'},
            {"type": "function_call", "call_id": "c2", "name": "get_weather",
             "arguments": '{"city":"Bergen"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "4 C"},
            {"type": "function_call_output", "call_id": "c2",
             "output": [{"type": "input_text", "text": "7 C"}]},
        ]}, [])
    assert plan.body == {
        "model": "tiny", "max_tokens": 20, "temperature": 0,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Use celsius."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
                {"id": "c2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Bergen"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "4 C"},
            {"role": "tool", "tool_call_id": "c2", "content": "7 C"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city",
            "parameters": WEATHER["parameters"], "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    # instructions are this request's only: the stored conversation starts after them
    assert plan.conversation == plan.body["messages"][1:]


def test_a_json_schema_format_logprobs_and_a_stream_map_to_their_chat_fields() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    plan = to_chat({"model": "tiny", "input": "Count.", "stream": True, "top_logprobs": 2,
                    "include": ["message.output_text.logprobs"],
                    "text": {"format": {"type": "json_schema", "name": "count",
                                        "schema": schema, "strict": True}}}, [])
    assert plan.body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "count", "schema": schema,
                                               "strict": True}}
    assert plan.body["logprobs"] is True and plan.body["top_logprobs"] == 2
    assert plan.body["stream"] and plan.body["stream_options"] == {"include_usage": True}
    assert to_chat({"model": "m", "input": "x", "text": {"format": {"type": "text"}}},
                   []).body == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def test_previous_turns_come_first() -> None:
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    plan = to_chat({"model": "tiny", "input": "Again?", "instructions": "Short."}, history)
    assert plan.body["messages"] == [{"role": "system", "content": "Short."}, *history,
                                     {"role": "user", "content": "Again?"}]


@pytest.mark.parametrize(("change", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
    ({"include": ["file_search_call.results"]}, "include"),
    ({"text": {"format": {"type": "grammar"}}}, "text.format.type"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"service_tier": "priority"}, "service_tier"),
    ({"frequency_bonus": 1}, "frequency_bonus"),
    ({"model": None}, "model"),
    ({"input": None}, "input"),
])
def test_what_the_network_cannot_do_is_a_400_naming_the_field(change: dict[str, Any],
                                                              param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        to_chat({"model": "tiny", "input": "Hi", **change}, [])
    assert caught.value.param == param


def _completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


def test_a_chat_answer_becomes_output_items_and_usage() -> None:
    draft = ResponseDraft({"model": "tiny", "input": "x", "metadata": {"a": "b"}})
    draft.add_chat_completion(_completion({"role": "assistant", "content": "Hi there"}),
                              logprobs=False)
    body = draft.to_json()
    assert body["object"] == "response" and body["id"].startswith("resp_")
    assert body["status"] == "completed" and body["metadata"] == {"a": "b"}
    assert [(i["type"], i["content"][0]["text"]) for i in body["output"]] == [
        ("message", "Hi there")]
    assert body["usage"]["input_tokens"] == 7 and body["usage"]["output_tokens"] == 3
    assert body["usage"]["total_tokens"] == 10

    calls = ResponseDraft({"model": "tiny"})
    calls.add_chat_completion(_completion({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "f", "arguments": "{}"}}]}, "tool_calls"), logprobs=False)
    assert [(i["type"], i["call_id"], i["name"]) for i in calls.output] == [
        ("function_call", "call_1", "f")]
    assert calls.output_messages() == [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]

    cut = ResponseDraft({"model": "tiny"})
    cut.add_chat_completion(_completion({"role": "assistant", "content": "Once"}, "length"),
                            logprobs=False)
    assert cut.status == "incomplete"
    assert cut.to_json()["incomplete_details"] == {"reason": "max_output_tokens"}


def _frames(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    return gen()


def _events(draft: ResponseDraft, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async def collect() -> list[bytes]:
        return [f async for f in stream_events(draft, _frames(chunks), logprobs=False)]
    events = []
    for frame in asyncio.run(collect()):
        head, data = frame.decode().split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_a_stream_of_text_then_a_call_is_the_responses_event_sequence() -> None:
    draft = ResponseDraft({"model": "tiny"})
    events = _events(draft, [
        _delta({"role": "assistant", "content": ""}),
        _delta({"content": "Let me "}), _delta({"content": "check."}),
        _delta({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                "function": {"name": "f", "arguments": ""}}]}),
        _delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        _delta({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        _delta({}, "tool_calls"),
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}},
    ])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert events[6]["text"] == "Let me check."
    assert events[12]["arguments"] == '{"a":1}' and events[12]["output_index"] == 1
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["call_id"] == "call_9" and final["usage"]["total_tokens"] == 14
    assert final == draft.to_json()


def test_a_stream_cut_by_max_tokens_is_incomplete_and_an_error_fails_it() -> None:
    cut = _events(ResponseDraft({"model": "tiny"}),
                  [_delta({"content": "Once upon"}), _delta({}, "length")])
    assert cut[-1]["type"] == "response.incomplete"
    assert cut[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    failed = _events(ResponseDraft({"model": "tiny"}), [
        _delta({"content": "Hal"}),
        {"error": {"message": "every node failed", "code": "upstream_error"}}])
    assert failed[-1]["type"] == "response.failed"
    assert failed[-1]["response"]["error"] == {"code": "upstream_error",
                                               "message": "every node failed"}


def test_the_store_keeps_the_newest_and_shows_each_key_its_own() -> None:
    store = ResponseStore(capacity=2)
    for n in range(3):
        store.put(StoredResponse("key:1", {"id": f"resp_{n}"}, [{"role": "user",
                                                                 "content": str(n)}]))
    with pytest.raises(ResponseNotFoundError):
        store.get("resp_0", "key:1")  # the oldest went first
    assert store.history("resp_2", "key:1") == [{"role": "user", "content": "2"}]
    with pytest.raises(ResponseNotFoundError):
        store.get("resp_2", "key:2")  # another key's
    with pytest.raises(InvalidRequestError) as caught:
        store.history("resp_2", None)
    assert caught.value.param == "previous_response_id"
    store.delete("resp_2", "key:1")
    assert len(store) == 1
