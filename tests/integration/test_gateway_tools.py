"""Tool calls and structured output through the gateway over two nodes (real processes,
the official ``openai`` client): forced calls valid at any temperature, streamed call
deltas that join, the call and result round trip, JSON answers, the refusals in OpenAI's
error JSON, and a node cut in the middle of a call (the client gets one whole call)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import xgrammar as xgr
from openai import OpenAI
from xgrammar.testing import _is_grammar_accept_string

from agoranet.node.launcher import running_command
from helpers import node_process, rigged_node_process

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Tell me about the library."}]
SCHEMA = {"type": "object", "properties": {"book": {"type": "string", "maxLength": 30},
                                           "pages": {"type": "integer", "minimum": 1,
                                                     "maximum": 900}},
          "required": ["book", "pages"], "additionalProperties": False}
JSON = xgr.Grammar.builtin_json_grammar()


WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "minLength": 3, "maxLength": 40},
    "days": {"type": "integer", "minimum": 1, "maximum": 7},
    "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "days", "unit"], "additionalProperties": False}
CLOCK = {"type": "object", "properties": {"zone": {"enum": ["utc", "cet", "pst"]}},
         "required": ["zone"], "additionalProperties": False}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                      "strict": True}},
    {"type": "function", "function": {"name": "get_time", "parameters": CLOCK}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
NAMED: Any = {"type": "function", "function": {"name": "get_weather"}}
NODE = ["--no-fine-tuning", "--no-adapters", "--free"]


@pytest.fixture(scope="module")
def nodes(tiny_model: Path) -> Iterator[tuple[str, str]]:
    with node_process(["--model", str(tiny_model), *NODE]) as one, \
            node_process(["--model", str(tiny_model), *NODE, "--price-in", "500",
                          "--price-out", "900"]) as two:
        yield one, two


@pytest.fixture(scope="module")
def gateway(nodes: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("gw-tools")
    with running_command(["gateway", "--open", "--spend-log", str(home / "spend.sqlite"),
                          "--node", nodes[0], "--node", nodes[1]]) as url:
        yield url


def _valid_call(call: Any, names: set[str]) -> None:
    assert call.type == "function" and call.id
    assert call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def _joined(chunks: Iterable[Any]) -> tuple[list[dict[str, Any]], list[str | None], str]:
    """Streamed tool-call deltas joined per index; the finish reasons; the content."""
    calls: dict[int, dict[str, Any]] = {}
    finishes, content = [], ""
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finishes.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"ids": [], "name": "", "arguments": ""})
                if delta.id:
                    call["ids"].append(delta.id)
                if delta.function and delta.function.name:
                    call["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
    return [calls[i] for i in sorted(calls)], [f for f in finishes if f], content


def test_json_schema_answers_are_valid_through_the_gateway(gateway: str) -> None:
    client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
    form = {"type": "json_schema", "json_schema": {"name": "b", "schema": SCHEMA}}
    reply = client.chat.completions.create(
        model="tiny", messages=QUESTION, temperature=1, seed=4, max_tokens=120,
        response_format=form)  # type: ignore[arg-type]
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), SCHEMA)
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny", messages=QUESTION, temperature=1, seed=5, max_tokens=120,
            response_format=form, stream=True)  # type: ignore[arg-type]
        if c.choices)
    jsonschema.validate(json.loads(streamed), SCHEMA)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_forced_calls_through_the_gateway_have_valid_arguments(
        gateway: str, temperature: float) -> None:
    client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
    for seed, choice, names in ((1, NAMED, {"get_weather"}),
                                (2, "required", {"get_weather", "get_time"})):
        for parallel in (False, True):  # OpenAI's default (true) allows several calls
            reply = client.chat.completions.create(
                model="tiny", messages=QUESTION, tools=TOOLS, tool_choice=choice,
                temperature=temperature, seed=seed, max_tokens=300,
                parallel_tool_calls=parallel)
            assert reply.choices[0].finish_reason == "tool_calls"
            assert reply.choices[0].message.content is None
            calls = reply.choices[0].message.tool_calls or []
            assert len(calls) == 1 if not parallel else len(calls) >= 1
            assert len({c.id for c in calls}) == len(calls)
            for call in calls:
                _valid_call(call, names)
            assert reply.usage is not None and reply.usage.completion_tokens > 0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_streamed_call_deltas_join_to_valid_arguments(gateway: str, temperature: float) -> None:
    client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
    for seed, choice, parallel in ((3, NAMED, False), (4, "required", False),
                                   (5, "required", True)):
        calls, finishes, content = _joined(client.chat.completions.create(
            model="tiny", messages=QUESTION, tools=TOOLS, tool_choice=choice, stream=True,
            temperature=temperature, seed=seed, max_tokens=300, parallel_tool_calls=parallel))
        assert finishes == ["tool_calls"] and content == ""
        assert len(calls) == 1 if not parallel else len(calls) >= 1
        for call in calls:
            assert len(call["ids"]) == 1 and call["name"] in SCHEMAS
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def test_the_call_and_result_round_trip_is_answered(gateway: str) -> None:
    client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
    first = client.chat.completions.create(
        model="tiny", messages=QUESTION, tools=TOOLS, tool_choice=NAMED, temperature=0,
        max_tokens=200, parallel_tool_calls=False)
    [call] = first.choices[0].message.tool_calls or []
    turn: list[Any] = [*QUESTION, first.choices[0].message.model_dump(exclude_none=True),
                       {"role": "tool", "tool_call_id": call.id,
                        "content": json.dumps({"forecast": "sunny", "high": 21})}]
    answer = client.chat.completions.create(model="tiny", messages=turn, tools=TOOLS,
                                            tool_choice="none", temperature=0, max_tokens=30)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason in ("stop", "length")
    # and a JSON answer about the result, in the same conversation
    shaped = client.chat.completions.create(
        model="tiny", messages=turn, temperature=1, seed=3, max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {
            "name": "b", "schema": SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(shaped.choices[0].message.content or ""), SCHEMA)


def test_json_object_gives_an_object(gateway: str) -> None:
    """Greedy or sampled, streamed or not, the answer is one whole object, unless it ran into
    ``max_tokens``, which the client is then told (``finish_reason: length``), as OpenAI
    does. Whether the tiny model closes a free-form object is its own choice (it is trained
    per machine); that a closed object ends the answer is the grammar's, tested on bounded
    schemas in ``tests/engines/test_constrained_property.py``."""
    client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
    for temperature in (0.0, 1.0):
        for stream in (False, True):
            asked: dict[str, Any] = {
                "model": "tiny", "messages": QUESTION, "temperature": temperature, "seed": 2,
                "max_tokens": 400, "response_format": {"type": "json_object"}}
            if stream:
                _, finishes, text = _joined(client.chat.completions.create(**asked,
                                                                           stream=True))
                [finish] = finishes
            else:
                reply = client.chat.completions.create(**asked)
                finish = reply.choices[0].finish_reason
                text = reply.choices[0].message.content or ""
            assert finish in ("stop", "length")
            if finish == "stop":
                assert isinstance(json.loads(text), dict)
            else:  # cut short: the beginning of an object, nothing the grammar would refuse
                assert text.startswith("{")
                assert _is_grammar_accept_string(JSON, text, require_termination=False), text


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("a tool_choice naming no listed tool", {
        "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "nope"),
    ("parameters that are no JSON schema", {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "objekt"}}}], "tool_choice": "required"}, "schema"),
    ("a tool message answering no call", {"messages": [
        *QUESTION, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]}, "call_x"),
    ("an unknown response_format", {"response_format": {"type": "yaml_please"}},
     "yaml_please"),
    ("a schema keyword no grammar enforces", {"response_format": {
        "type": "json_schema", "json_schema": {"name": "b", "schema": {
            "oneOf": [{"type": "string"}, {"type": "integer"}]}}}}, "oneOf"),
]


@pytest.mark.parametrize(("what", "fields", "word"), BAD, ids=[b[0] for b in BAD])
def test_bad_tool_requests_get_openai_errors_and_blame_no_node(
        gateway: str, what: str, fields: dict[str, Any], word: str) -> None:
    _wait_for_offers(gateway, 2)
    before = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=30).json()
    response = httpx.post(f"{gateway}/chat/completions", timeout=60, json={
        "model": "tiny", "messages": QUESTION, "max_tokens": 20, **fields})
    assert response.status_code == 400, (what, response.text)
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and word in error["message"], error
    assert set(error) >= {"message", "type", "param", "code"}
    after = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=30).json()
    assert [n["failures"] for n in _listed(after)] == [n["failures"] for n in _listed(before)]


def test_tool_choice_auto_goes_only_where_it_is_offered(
        gateway: str, nodes: tuple[str, str]) -> None:
    """The nodes' signed offers say whether their model takes ``tool_choice: auto``; the
    gateway serves it if one does, and otherwise refuses it itself (no node is asked)."""
    offers = [httpx.get(n.removesuffix("/v1") + "/.well-known/agoranet", timeout=30).json()
              for n in nodes]
    listed = [set(o["models"][0]["capabilities"]) for o in offers]
    assert all({"tools", "structured_output"} <= c for c in listed)
    response = httpx.post(f"{gateway}/chat/completions", timeout=60, json={
        "model": "tiny", "messages": QUESTION, "max_tokens": 60, "tools": TOOLS})
    if any("tool_choice_auto" in c for c in listed):
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "capability_not_offered" and error["param"] == "tool_choice"
        assert "auto" in error["message"] and "required" in error["message"]


def _listed(nodes: Any) -> list[dict[str, Any]]:
    listed = nodes["nodes"] if isinstance(nodes, dict) else nodes
    return sorted(listed, key=lambda n: str(n["url"]))


def test_a_node_cut_mid_call_gives_the_client_one_whole_call(
        tiny_model: Path, nodes: tuple[str, str], tmp_path: Path) -> None:
    """The cheapest node drops its connection a few frames into every answer: the call is
    asked again of the next node, and the client sees only that node's call, whole."""
    from agoranet.gateway.spendlog import SpendLog

    with rigged_node_process(["--model", str(tiny_model), *NODE, "--price-in", "0",
                               "--price-out", "0", "--chaos-fail-after", "4"]) as victim, \
            running_command(["gateway", "--open", "--spend-log", str(tmp_path / "spend.sqlite"),
                             "--node", victim, "--node", nodes[1]]) as gw:
        _wait_for_offers(gw, 2)
        client = OpenAI(base_url=gw, api_key="x", max_retries=0)
        cheapest = {"agoranet": {"prefer": "cheapest"}}
        chunks = list(client.chat.completions.create(
            model="tiny", messages=QUESTION, tools=TOOLS, tool_choice=NAMED, stream=True,
            temperature=1, seed=7, max_tokens=200, extra_body=cheapest,
            parallel_tool_calls=False,
            stream_options={"include_usage": True}))
        calls, finishes, content = _joined(chunks)
        assert finishes == ["tool_calls"] and content == ""
        [call] = calls
        assert len(call["ids"]) == 1 and call["name"] == "get_weather"
        jsonschema.validate(json.loads(call["arguments"]), WEATHER)
        [streamed] = [c.model_extra["agoranet"] for c in chunks if c.usage is not None]
        assert streamed["nodes"] == [victim, nodes[1]] and streamed["failovers"] == 1
        _wait_unbanned(gw, victim)  # the victim's short ban ends: cut it again, unstreamed
        reply = client.chat.completions.create(
            model="tiny", messages=QUESTION, tools=TOOLS, tool_choice="required",
            temperature=0, max_tokens=200, extra_body=cheapest, parallel_tool_calls=False)
        [whole] = reply.choices[0].message.tool_calls or []
        _valid_call(whole, set(SCHEMAS))
        summary = reply.model_extra["agoranet"]  # type: ignore[index]
        assert summary["nodes"] == [victim, nodes[1]] and summary["failovers"] == 1
        rows = SpendLog(tmp_path / "spend.sqlite").rows(summary["request_id"])
        assert [(r.node, r.outcome) for r in rows] == [(victim, "partial"), (nodes[1], "ok")]
        assert rows[0].completion_tokens > 0  # it was cut in the middle of the call


def _wait_for_offers(gateway: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=30).json()
        if sum(bool(r["models"]) for r in rows["nodes"]) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError("the gateway never saw every node's offer")


def _wait_unbanned(gateway: str, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes", timeout=30).json()
        if not any(r["url"] == url and r["banned"] for r in rows["nodes"]):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} stayed banned")
