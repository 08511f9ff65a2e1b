"""Function calling and structured output against a real node, with the ``openai`` client.

Under ``required`` and a named function the call is valid because the node decodes
under a grammar; under ``auto`` (the default) the tiny model, taught the Hermes
tool-call format, decides itself, and the node parses its calls (issue #13).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from openai import OpenAI

from helpers import node_process

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
CLOCK = {"type": "object", "properties": {"zone": {"enum": ["utc", "cet", "pst"]}},
         "required": ["zone"], "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                      "parameters": WEATHER, "strict": True}},
    {"type": "function", "function": {"name": "get_time", "parameters": CLOCK}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}


@pytest.fixture(scope="module")
def client(tiny_node: str) -> OpenAI:
    return OpenAI(base_url=tiny_node, api_key="unused", max_retries=0)


def _valid_call(call: Any, names: set[str]) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_named_tool_call_has_valid_arguments(client: OpenAI, temperature: float) -> None:
    for seed in range(3):
        reply = client.chat.completions.create(
            model="tiny", messages=QUESTION, tools=TOOLS, temperature=temperature, seed=seed,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=200)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        calls = choice.message.tool_calls or []
        assert len(calls) == 1
        _valid_call(calls[0], {"get_weather"})
        assert reply.usage is not None and reply.usage.completion_tokens > 0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_required_tool_call_picks_a_listed_function(client: OpenAI, temperature: float) -> None:
    for seed in range(3):
        for parallel in (True, False):
            reply = client.chat.completions.create(
                model="tiny", messages=QUESTION, tools=TOOLS, tool_choice="required",
                temperature=temperature, seed=seed, max_tokens=200,
                parallel_tool_calls=parallel)
            assert reply.choices[0].finish_reason == "tool_calls"
            calls = reply.choices[0].message.tool_calls or []
            assert 1 <= len(calls) <= (4 if parallel else 1)
            for call in calls:
                _valid_call(call, {"get_weather", "get_time"})


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_weather"}}])
def test_streamed_tool_call_deltas_join_to_valid_arguments(client: OpenAI, choice: Any) -> None:
    stream = client.chat.completions.create(
        model="tiny", messages=QUESTION, tools=TOOLS, tool_choice=choice, temperature=1.0,
        seed=7, max_tokens=200, stream=True, parallel_tool_calls=False)
    heads, pieces, finish = [], [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            assert call.index == 0
            if call.id is not None:
                assert not pieces, "id and name come before any arguments"
                heads.append((call.id, call.function.name if call.function else None))
            if call.function and call.function.arguments:
                pieces.append(call.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert len(heads) == 1 and heads[0][0].startswith("call_")
    assert len(pieces) > 1, "arguments arrive in pieces"
    name = heads[0][1]
    assert name in SCHEMAS
    jsonschema.validate(json.loads("".join(pieces)), SCHEMAS[name])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_object_gives_an_object(client: OpenAI, temperature: float) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=QUESTION, response_format={"type": "json_object"},
        temperature=temperature, seed=1, max_tokens=300)
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    else:  # an unbounded object may run out of tokens; it is still an object's beginning
        assert reply.choices[0].finish_reason == "length"
        assert (reply.choices[0].message.content or "").startswith("{")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_strict_json_schema_gives_valid_content(client: OpenAI, temperature: float) -> None:
    form = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER,
                                                   "strict": True}}
    for seed in range(3):
        reply = client.chat.completions.create(
            model="tiny", messages=QUESTION, response_format=form,  # type: ignore[arg-type]
            temperature=temperature, seed=seed, max_tokens=200)
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content or ""), WEATHER)


def test_max_tokens_cut_is_length(client: OpenAI) -> None:
    form = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}}
    reply = client.chat.completions.create(
        model="tiny", messages=QUESTION, response_format=form,  # type: ignore[arg-type]
        temperature=0, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert (reply.choices[0].message.content or "").startswith('{"')  # the schema's start
    # The call is written in the model's own format: '<tool_call>{"name": "get_weather",
    # "arguments": ' is about 13 tokens, a whole call about 26.
    call = client.chat.completions.create(
        model="tiny", messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=18,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert call.choices[0].finish_reason == "length"
    cut = (call.choices[0].message.tool_calls or [])[0].function
    assert cut.name == "get_weather" and cut.arguments.startswith('{"')  # partial arguments


def test_a_conversation_with_tool_results_continues_with_a_call(client: OpenAI) -> None:
    """An agent loop's second turn: the history holds a call and its result."""
    history: list[Any] = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    reply = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS,
                                           tool_choice="none", temperature=0, max_tokens=20)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.choices[0].message.tool_calls is None
    follow = client.chat.completions.create(
        model="tiny", messages=history, tools=TOOLS, temperature=1, max_tokens=100,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert follow.choices[0].finish_reason == "tool_calls"
    _valid_call((follow.choices[0].message.tool_calls or [])[0], {"get_time"})


BAD: dict[str, dict[str, Any]] = {
    "unknown tool_choice function": {
        "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    "parameters not a JSON schema": {
        "tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": 5}}}}}],
        "tool_choice": "required"},
    "parameters not an object schema": {
        "tools": [{"type": "function", "function": {"name": "f",
                                                    "parameters": {"type": "string"}}}],
        "tool_choice": "required"},
    "schema feature not enforceable": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"oneOf": [{"type": "integer"},
                                                             {"type": "number"}]}}}}}},
    "unknown response_format type": {"response_format": {"type": "yaml_please"}},
    "response_format schema invalid": {
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "x", "schema": {"minLength": -1}}}},
    "tool message answers no call": {
        "messages": [*QUESTION, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
    "tool_choice without tools": {"tool_choice": "required"},
    "stream not a boolean": {"stream": "yes"},
    "parallel_tool_calls not a boolean": {"tools": TOOLS, "parallel_tool_calls": "yes"},
    "unknown tool_choice string": {"tools": TOOLS, "tool_choice": "sometimes"},
    "non-function tool": {"tools": [{"type": "code_interpreter"}], "tool_choice": "required"},
    "stop with a forced call": {"tools": TOOLS, "tool_choice": "required", "stop": ["}"]},
}
EXPECTED_WORDS = {
    "unknown tool_choice function": "nope",
    "parameters not a JSON schema": "JSON schema",
    "schema feature not enforceable": "oneOf",
    "unknown response_format type": "yaml_please",
    "tool message answers no call": "call_x",
    "parallel_tool_calls not a boolean": "parallel_tool_calls",
    "stream not a boolean": "stream",
}


@pytest.fixture(scope="module")
def http(tiny_node: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_node, timeout=30) as c:
        yield c


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_400_in_openai_error_json(http: httpx.Client, case: str) -> None:
    body = {"model": "tiny", "messages": QUESTION, "max_tokens": 5, **BAD[case]}
    response = http.post("/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert {"message", "type", "param", "code"} <= set(error)
    if case in EXPECTED_WORDS:
        assert EXPECTED_WORDS[case] in error["message"], error["message"]


@pytest.fixture(scope="module")
def front(tiny_node: str) -> Iterator[str]:
    """An upstream-engine node in front of the tiny node: it cannot constrain, it passes."""
    with node_process(["--engine", "upstream", "--upstream-url", tiny_node, "--free"]) as url:
        yield url


def test_upstream_passes_tools_through(front: str) -> None:
    proxied = OpenAI(base_url=front, api_key="x", max_retries=0)
    reply = proxied.chat.completions.create(
        model="tiny", messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert reply.choices[0].finish_reason == "tool_calls"
    _valid_call((reply.choices[0].message.tool_calls or [])[0], {"get_weather"})
    form = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}}
    reply = proxied.chat.completions.create(
        model="tiny", messages=QUESTION, response_format=form,  # type: ignore[arg-type]
        temperature=1, seed=3, max_tokens=200)
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), WEATHER)
    auto = proxied.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS,
                                           temperature=0, max_tokens=200)
    assert auto.choices[0].finish_reason == "tool_calls"
    _parsed_call((auto.choices[0].message.tool_calls or [])[0])


# ------------------------------------------------------------------ tool_choice auto


def _parsed_call(call: Any) -> None:
    """A call parsed from the model's free text: an offered function, a JSON object (the
    model is not smart; only forced calls are valid against the schema by construction)."""
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in SCHEMAS
    assert isinstance(json.loads(call.function.arguments), dict)


@pytest.mark.parametrize("choice", [None, "auto"])
def test_auto_answers_a_tool_shaped_question_with_a_call(client: OpenAI, choice: Any) -> None:
    extra = {} if choice is None else {"tool_choice": choice}
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS,
                                           temperature=0, max_tokens=200, **extra)
    choice0 = reply.choices[0]
    assert choice0.finish_reason == "tool_calls"
    assert choice0.message.content is None
    calls = choice0.message.tool_calls or []
    assert len(calls) == 1
    _parsed_call(calls[0])


def test_auto_answers_other_questions_in_words(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Tell me a story."}], tools=TOOLS,
        temperature=0, max_tokens=60)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.choices[0].message.tool_calls is None
    assert len((reply.choices[0].message.content or "").split()) > 3


def test_auto_streams_parallel_calls_in_openai_delta_format(client: OpenAI) -> None:
    question = [{"role": "user",
                 "content": "What is the weather in Rome? And what time is it in CET?"}]
    stream = client.chat.completions.create(model="tiny", messages=question, tools=TOOLS,
                                            temperature=0, max_tokens=200, stream=True)
    heads: dict[int, tuple[str, str]] = {}
    arguments: dict[int, list[str]] = {}
    finish, content = None, ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            if call.id is not None:
                assert call.index not in heads and call.index not in arguments
                assert call.function is not None and call.function.name
                heads[call.index] = (call.id, call.function.name)
            else:
                assert call.index in heads, "id and name come before any arguments"
            if call.function and call.function.arguments:
                arguments.setdefault(call.index, []).append(call.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == ""
    assert sorted(heads) == [0, 1]
    assert {heads[i][1] for i in (0, 1)} <= set(SCHEMAS)
    assert len({heads[i][0] for i in (0, 1)}) == 2
    for index in heads:
        assert len(arguments[index]) > 1, "arguments arrive in pieces"
        assert isinstance(json.loads("".join(arguments[index])), dict)
    one = client.chat.completions.create(model="tiny", messages=question, tools=TOOLS,
                                         temperature=0, max_tokens=200,
                                         parallel_tool_calls=False)
    assert one.choices[0].finish_reason == "tool_calls"
    assert len(one.choices[0].message.tool_calls or []) == 1
