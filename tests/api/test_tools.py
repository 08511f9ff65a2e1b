"""Wire checks of tools, tool_choice, response_format and tool messages (issue #13)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agoranet.api.errors import error_from_exception
from agoranet.api.tools import ResponseFormatJsonSchema, check_json_schema
from agoranet.api.types import ChatCompletionRequest
from agoranet.engines.structured import AutoTools, ForcedToolCall, JsonOutput, output_mode
from agoranet.node import convert

ASK = {"role": "user", "content": "hi"}
F = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"a": {"type": ["integer", "null"], "default": None}}}}}
G = {"type": "function", "function": {"name": "g"}}


def _deep_any_of(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        schema = {"anyOf": [schema]}
    return schema


def chat(**kw: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "m", "messages": [ASK]}
    body.update(kw)
    return ChatCompletionRequest.model_validate(body)


def refused(**kw: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        chat(**kw)
    status, body, _ = error_from_exception(info.value)
    return status, body["error"]


def test_full_tool_conversation_is_accepted() -> None:
    request = chat(
        tools=[F, G], tool_choice={"type": "function", "function": {"name": "g"}},
        parallel_tool_calls=False,
        messages=[ASK, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "ok"}])
    assert request.messages[1].text() == "" and request.messages[2].tool_call_id == "c1"
    generation = convert.from_chat(request, 5)
    assert generation.tool_choice == {"type": "function", "function": {"name": "g"}}
    assert generation.messages is not None
    assert generation.messages[1].tool_calls[0]["id"] == "c1"
    # a schema's nulls stay; unset optional fields of the wire objects are left out
    assert generation.tools[0]["function"]["parameters"] == F["function"]["parameters"]
    assert generation.tools[1] == {"type": "function", "function": {"name": "g"}}
    mode = output_mode(generation)
    assert isinstance(mode, ForcedToolCall) and [f.name for f in mode.functions] == ["g"]
    assert mode.functions[0].parameters["properties"] == {}  # no parameters: an empty object


def test_modes() -> None:
    assert isinstance(output_mode(convert.from_chat(chat(tools=[F]), 5)), AutoTools)
    assert output_mode(convert.from_chat(chat(tools=[F], tool_choice="none"), 5)) is None
    json_mode = output_mode(convert.from_chat(chat(response_format={"type": "json_object"}), 5))
    assert isinstance(json_mode, JsonOutput) and json_mode.schema == {"type": "object"}
    schema = {"type": "object", "properties": {"x": {"const": None}}}
    form = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema,
                                                   "strict": True}}
    mode = output_mode(convert.from_chat(chat(response_format=form), 5))
    assert isinstance(mode, JsonOutput) and mode.schema == schema
    assert output_mode(convert.from_chat(chat(response_format={"type": "text"}), 5)) is None


@pytest.mark.parametrize(("fields", "word"), [
    ({"tools": [F], "tool_choice": {"type": "function", "function": {"name": "zz"}}}, "zz"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"parallel_tool_calls": True}, "parallel_tool_calls"),
    ({"tools": [F, F]}, "unique"),
    ({"tools": [{"type": "function", "function": {"name": "f",
                                                  "parameters": {"type": "objekt"}}}]},
     "JSON schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"minimum": "3"}}}}}]}, "JSON schema"),
    ({"tools": [{"type": "function", "function": {"name": "f",
                                                  "parameters": {"type": "array"}}}]},
     "object"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "name"),
    ({"tools": [{"type": "retrieval"}]}, "function"),
    ({"tools": [F], "tool_choice": "sometimes"}, "tool_choice"),
    ({"response_format": {"type": "yaml_please"}}, "yaml_please"),
    ({"response_format": {"type": "json_schema"}}, "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "object", "required": "a"}}}}, "JSON schema"),
    ({"messages": [ASK, {"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "nope"),
    ({"messages": [ASK, {"role": "tool", "content": "x"}]}, "tool_call_id"),
    ({"messages": [{"role": "user", "content": "a", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": "{}"}}]}]}, "assistant"),
    # a tool result may only answer a call made before it
    ({"messages": [ASK, {"role": "tool", "tool_call_id": "c9", "content": "x"},
                   {"role": "assistant", "tool_calls": [
                       {"id": "c9", "function": {"name": "f", "arguments": "{}"}}]}]}, "c9"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": _deep_any_of(100)}}}, "nested deeper"),
    ({"stream": "yes"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"parallel_tool_calls": "no", "tools": [F]}, "parallel_tool_calls"),
])
def test_bad_tool_fields_are_400(fields: dict[str, Any], word: str) -> None:
    status, error = refused(**fields)
    assert status == 400 and error["type"] == "invalid_request_error"
    assert word in error["message"] + str(error["param"]), error


def test_check_json_schema_uses_the_declared_dialect() -> None:
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
              "properties": {"t": {"items": [{"type": "string"}]}}}
    assert check_json_schema(draft7) is draft7
    with pytest.raises(ValueError, match="not a valid JSON schema at 'properties/a/type'"):
        check_json_schema({"properties": {"a": {"type": "str"}}})


def test_response_format_keeps_its_schema_name_on_the_wire() -> None:
    form = ResponseFormatJsonSchema.model_validate(
        {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}})
    dumped = form.model_dump(by_alias=True, exclude_none=True)
    assert dumped == {"type": "json_schema",
                      "json_schema": {"name": "n", "schema": {"type": "object"}}}
