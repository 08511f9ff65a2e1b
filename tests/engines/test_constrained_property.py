"""Property: any schema of the supported subset gives valid output from the tiny model.

Schemas are drawn within the subset constrained decoding enforces (objects with required
and optional keys, arrays with item bounds, enums, consts, strings with lengths, integers
with ranges, booleans, null, anyOf, nesting), small enough that their longest valid
instance fits ``max_tokens`` (a token is at least one byte). The tiny model samples at
temperature 1; every answer must end by itself and validate.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agoranet.engines.base import GenerationRequest, Message, collect
from agoranet.engines.constrained import unenforceable
from agoranet.engines.hf import TransformersEngine

MAX_BYTES = 160  # the longest valid instance a drawn schema may have
EXAMPLES = 200

keys = st.text(alphabet="abcdefghij_", min_size=1, max_size=5)
short = st.text(alphabet="abcxyz -", max_size=4)


@st.composite
def strings(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.integers(0, 3))
    return {"type": "string", "minLength": low, "maxLength": draw(st.integers(max(low, 1), 6))}


@st.composite
def integers(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.integers(-500, 500))
    return {"type": "integer", "minimum": low, "maximum": low + draw(st.integers(0, 400))}


leaves = st.one_of(
    strings(),
    integers(),
    st.builds(lambda v: {"enum": v}, st.lists(st.one_of(short, st.integers(-9, 99), st.none(),
                                                        st.booleans()),
                                              min_size=1, max_size=4, unique=True)),
    st.builds(lambda v: {"const": v}, st.one_of(short, st.integers(0, 9))),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
)


@st.composite
def objects(draw: st.DrawFn, children: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    properties = draw(st.dictionaries(keys, children, min_size=1, max_size=3))
    required = [k for k in properties if draw(st.booleans())]  # the others are optional
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


@st.composite
def arrays(draw: st.DrawFn, children: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    low = draw(st.integers(0, 1))
    return {"type": "array", "items": draw(children), "minItems": low,
            "maxItems": draw(st.integers(max(low, 1), 3))}


def composites(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(objects(children), arrays(children),
                     st.builds(lambda a, b: {"anyOf": [a, b]}, children, children))


def longest(schema: dict[str, Any]) -> int:
    """Bytes of the longest valid instance (an escaped character is at most 6 bytes)."""
    if "enum" in schema:
        return max(len(json.dumps(v).encode()) for v in schema["enum"])
    if "const" in schema:
        return len(json.dumps(schema["const"]).encode())
    if "anyOf" in schema:
        return max(longest(s) for s in schema["anyOf"])
    kind = schema["type"]
    if kind == "string":
        return 2 + 6 * int(schema["maxLength"])
    if kind == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    if kind == "array":
        return 2 + int(schema["maxItems"]) * (longest(schema["items"]) + 2)
    if kind == "object":
        return 2 + sum(len(json.dumps(k)) + 4 + longest(v) for k, v in schema["properties"].items())
    return {"boolean": 5, "null": 4}[kind]


schemas = st.recursive(leaves, composites, max_leaves=5).filter(
    lambda s: longest(s) <= MAX_BYTES)


@pytest.fixture(scope="module")
def engine(tiny_loaded: Any) -> Iterator[TransformersEngine]:
    engine = TransformersEngine(loaded=tiny_loaded, max_active=4, max_queue=8)
    yield engine
    asyncio.run(engine.aclose())


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(schema=schemas, seed=st.integers(0, 2**31), as_tool=st.booleans())
def test_every_supported_schema_gives_valid_output(engine: TransformersEngine,
                                                   schema: dict[str, Any], seed: int,
                                                   as_tool: bool) -> None:
    assert unenforceable(schema) is None, schema
    kwargs: dict[str, Any] = {"response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "s", "schema": schema}}}
    if as_tool and schema.get("type") == "object":  # the same schema as a forced call's arguments
        kwargs = {"tools": ({"type": "function", "function": {"name": "f", "parameters": schema}},),
                  "tool_choice": "required", "parallel_tool_calls": False}  # one call
    request = GenerationRequest(model="tiny", messages=(Message("user", "Give me data."),),
                                # a call is wrapped in the model's own format: a few
                                # more tokens around its arguments
                                max_tokens=longest(schema) + 2 + 24 * ("tools" in kwargs),
                                temperature=1.0, seed=seed,
                                **kwargs)

    async def go() -> tuple[str, Any, Any]:
        prepared = await engine.prepare(request)
        pieces: list[Any] = []
        events = engine.stream(prepared)

        async def record() -> Any:
            async for event in events:
                pieces.extend(getattr(event, "tool_calls", ()))
                yield event

        text, _, finish = await collect(record())
        return text, pieces, finish

    text, pieces, finish = asyncio.run(go())
    if "tools" in kwargs:
        assert finish.reason == "tool_calls", (schema, pieces)
        text = "".join(p.arguments for p in pieces)
    else:
        assert finish.reason == "stop", (schema, text)
    jsonschema.validate(json.loads(text), schema)
