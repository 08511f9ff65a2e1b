"""What a request's ``tools``, ``tool_choice`` and ``response_format`` ask of an engine.

The wire fields (validated in :mod:`agoranet.api.tools`) reduce to one of:

- nothing (plain text: no tools, or ``tool_choice`` ``none``, and no JSON format);
- :class:`JsonOutput`: the answer's content is JSON, valid against a schema
  (``json_schema``) or any JSON object (``json_object``);
- :class:`ForcedToolCall`: the answer is one call of one of the given functions, with
  arguments valid against that function's ``parameters`` (``required`` or a named
  function); under ``required`` with ``parallel_tool_calls`` (OpenAI's default) it may
  be several calls;
- :class:`AutoTools`: the model decides between text and calls (``auto``, the default
  when tools are given): needs a model that was taught a tool-call format and a parser
  for it.

Pure data and logic; engines decide what they can honour.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agoranet.engines.base import GenerationRequest, ToolCallDelta

__all__ = [
    "AutoTools",
    "ForcedToolCall",
    "JsonOutput",
    "OutputMode",
    "ToolFunction",
    "join_tool_calls",
    "output_mode",
    "tool_definitions",
]

ANY_OBJECT: Mapping[str, Any] = {"type": "object"}
NO_ARGUMENTS: Mapping[str, Any] = {"type": "object", "properties": {},
                                   "additionalProperties": False}


@dataclass(frozen=True, slots=True)
class ToolFunction:
    name: str
    parameters: Mapping[str, Any]
    param: str  # where its schema is in the request, for error messages


@dataclass(frozen=True, slots=True)
class JsonOutput:
    schema: Mapping[str, Any]
    param: str


@dataclass(frozen=True, slots=True)
class ForcedToolCall:
    functions: tuple[ToolFunction, ...]  # one when named; the model picks when several
    parallel: bool = False  # several calls may be made (``required``, parallel calls on)


@dataclass(frozen=True, slots=True)
class AutoTools:
    functions: tuple[ToolFunction, ...]


OutputMode = JsonOutput | ForcedToolCall | AutoTools | None


def tool_definitions(request: GenerationRequest) -> list[ToolFunction]:
    out = []
    for index, tool in enumerate(request.tools):
        function = tool["function"]
        parameters = function.get("parameters")
        out.append(ToolFunction(str(function["name"]),
                                NO_ARGUMENTS if parameters is None else parameters,
                                f"tools[{index}].function.parameters"))
    return out


def output_mode(request: GenerationRequest) -> OutputMode:
    """What the request's tool and format fields ask for (see the module docstring)."""
    functions = tool_definitions(request)
    choice = request.tool_choice
    if functions and choice != "none":
        if choice is None or choice == "auto":
            return AutoTools(tuple(functions))
        if choice == "required":
            return ForcedToolCall(tuple(functions),
                                  parallel=request.parallel_tool_calls is not False)
        if isinstance(choice, Mapping):
            name = choice["function"]["name"]
            return ForcedToolCall(tuple(f for f in functions if f.name == name))
        raise ValueError(f"unknown tool_choice {choice!r}")
    form = request.response_format
    if form is None or form["type"] == "text":
        return None
    if form["type"] == "json_object":
        return JsonOutput(ANY_OBJECT, "response_format")
    if form["type"] == "json_schema":
        return JsonOutput(form["json_schema"]["schema"], "response_format.json_schema.schema")
    raise ValueError(f"unknown response_format type {form['type']!r}")


def join_tool_calls(pieces: Iterable[ToolCallDelta]) -> list[dict[str, Any]]:
    """Streamed tool-call pieces joined into OpenAI's ``message.tool_calls``."""
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, {"id": "", "type": "function",
                                              "function": {"name": "", "arguments": ""}})
        if piece.id is not None:
            call["id"] = piece.id
        if piece.name is not None:
            call["function"]["name"] = piece.name
        call["function"]["arguments"] += piece.arguments
    return [calls[i] for i in sorted(calls)]
