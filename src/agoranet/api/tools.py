"""OpenAI wire types for function calling and structured output.

``tools`` (function tools whose ``parameters`` is a JSON schema), ``tool_choice``
(``auto``, ``none``, ``required`` or one named function), ``response_format``
(``text``, ``json_object``, ``json_schema``) and the tool calls an assistant message
carries. Everything here is checked as it is parsed: a schema that is not a JSON
schema (by ``jsonschema``'s meta-schema), a ``tool_choice`` naming a function not in
``tools``, an unknown ``response_format`` type and a ``tool`` message answering no
earlier call are refused with a 400, never ignored. Whether an engine can *enforce* a
schema is the engine's question, asked when it prepares the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

__all__ = [
    "FUNCTION_NAME_PATTERN",
    "MAX_SCHEMA_DEPTH",
    "MAX_TOOLS",
    "FunctionDefinition",
    "FunctionTool",
    "JsonSchemaFormat",
    "NamedFunction",
    "NamedToolChoice",
    "ResponseFormat",
    "ResponseFormatJsonObject",
    "ResponseFormatJsonSchema",
    "ResponseFormatText",
    "ToolCall",
    "ToolCallFunction",
    "ToolChoice",
    "check_json_schema",
    "check_tool_setup",
    "unanswered_tool_messages",
]

FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_TOOLS = 128  # OpenAI's limit
# JSON nesting of one schema (a subschema under "properties" is 3 levels down): far
# beyond any real tool's arguments, and shallow enough for recursive checkers.
MAX_SCHEMA_DEPTH = 64


def _depth(value: object) -> int:
    """How deeply ``value`` nests JSON containers (iteratively: it may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def check_json_schema(schema: object) -> dict[str, Any]:
    """``schema`` if it is a valid JSON schema (its ``$schema`` dialect, else 2020-12)."""
    if not isinstance(schema, dict):
        raise ValueError("a JSON schema must be an object")
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"the schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        at = f" at '{where}'" if where else ""
        raise ValueError(f"not a valid JSON schema{at}: {exc.message}") from None
    return schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionDefinition(_Strict):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    # None: a function without arguments (an empty object).
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None

    @field_validator("parameters")
    @classmethod
    def _check_parameters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        check_json_schema(value)
        kind = value.get("type")
        if kind is not None and kind != "object":
            raise ValueError("function parameters must describe a JSON object "
                             f"('type': 'object'), not {kind!r}")
        return value

    def parameters_schema(self) -> dict[str, Any]:
        """The arguments' schema; a function without parameters takes an empty object."""
        if self.parameters is None:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return self.parameters


class FunctionTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    """A call an assistant message made (in a conversation's history)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ResponseFormatText(_Strict):
    type: Literal["text"]


class ResponseFormatJsonObject(_Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None

    @field_validator("schema_")
    @classmethod
    def _check_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_json_schema(value)


class ResponseFormatJsonSchema(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
    Field(discriminator="type"),
]


def check_tool_setup(tools: Sequence[FunctionTool] | None, tool_choice: ToolChoice | None,
                     parallel_tool_calls: bool | None) -> None:
    """``tool_choice`` and ``parallel_tool_calls`` agree with ``tools``."""
    tools = tools or []
    if len(tools) > MAX_TOOLS:
        raise ValueError(f"at most {MAX_TOOLS} tools are allowed, got {len(tools)}")
    names = [t.function.name for t in tools]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ValueError(f"tools: function names must be unique ({', '.join(doubled)})")
    if not tools:
        if tool_choice is not None and tool_choice != "none":
            raise ValueError("tool_choice needs tools: no tools were given")
        if parallel_tool_calls is not None:
            raise ValueError("parallel_tool_calls is only allowed when tools are given")
        return
    if isinstance(tool_choice, NamedToolChoice) and tool_choice.function.name not in names:
        raise ValueError(f"tool_choice names function '{tool_choice.function.name}', "
                         f"which is not in tools ({', '.join(names)})")


def unanswered_tool_messages(messages: Sequence[tuple[str, Sequence[str], str | None]]
                             ) -> list[tuple[int, str | None]]:
    """``(index, tool_call_id)`` of each ``tool`` message whose id matches no earlier
    call; ``messages`` are ``(role, ids of the calls it makes, tool_call_id)``."""
    seen: set[str] = set()
    bad: list[tuple[int, str | None]] = []
    for index, (role, calls, answered) in enumerate(messages):
        seen.update(calls)
        if role == "tool" and (answered is None or answered not in seen):
            bad.append((index, answered))
    return bad
