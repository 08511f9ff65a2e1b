"""Tool definitions, pricing, validation and limits, without a chain.

Schemas come from type hints, arguments are checked strictly as JSON before anything
else, a price is fixed or computed from the validated arguments (and a pricing function
that fails or returns a non-amount is the seller's error, never a charge), and the
HTTP routes of a free server answer in OpenAI's error JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from agoranet.errors import (
    ConfigError,
    InvalidRequestError,
    PayloadTooLargeError,
    ToolFailedError,
    ToolNotFoundError,
)
from agoranet.payments.accept.ledger import MAX_AMOUNT
from agoranet.tools import Tool, ToolServer
from agoranet.tools.app import create_tool_app
from agoranet.tools.limits import ArgumentLimits
from agoranet.tools.loading import load_tool_server
from agoranet.tools.payments import resource_tool
from agoranet.tools.upstream import PriceList


class Point(BaseModel):
    x: int
    y: int


def make_server() -> ToolServer:
    server = ToolServer("unit")

    @server.tool(price=5)
    def add(a: int, b: int = 2) -> int:
        """Adds."""
        return a + b

    @server.tool(price=lambda args: 3 * len(args["text"]), name="shout",
                 description="Loud.")
    async def upper(text: str) -> dict[str, str]:
        return {"text": text.upper()}

    @server.tool(price=0)
    def where(p: Point) -> Point:
        return Point(x=p.y, y=p.x)

    @server.tool(price=1)
    def fails(n: int) -> int:
        raise ValueError(f"no {n}")

    @server.tool(price=1)
    def lies() -> int:
        return "not a number"  # type: ignore[return-value]

    return server


def test_schemas_from_type_hints() -> None:
    server = make_server()
    add = server.get("add")
    assert add.description == "Adds."
    assert add.input_schema["properties"] == {
        "a": {"title": "A", "type": "integer"},
        "b": {"default": 2, "title": "B", "type": "integer"}}
    assert add.input_schema["required"] == ["a"]
    assert add.input_schema["additionalProperties"] is False
    # a non-object result is sent as {"result": value}: MCP's structured content is an object
    assert add.output_schema == {"type": "object", "properties": {
        "result": {"type": "integer"}}, "required": ["result"]}
    shout = server.get("shout")
    assert (shout.name, shout.description) == ("shout", "Loud.")
    assert shout.output_schema is not None and shout.output_schema["type"] == "object"
    where = server.get("where")
    assert "$defs" in where.input_schema and where.output_schema is not None
    assert [t.name for t in server] == ["add", "shout", "where", "fails", "lies"]


def test_arguments_are_checked_strictly() -> None:
    add = make_server().get("add")
    assert add.validate({"a": 1}) == {"a": 1, "b": 2}
    for bad, word in (({"a": "1"}, "'a'"), ({}, "'a'"), ({"a": 1, "c": 3}, "'c'"),
                      ({"a": 1.5}, "'a'"), ({"a": True}, "'a'")):
        with pytest.raises(InvalidRequestError, match=word):
            add.validate(bad)
    where = make_server().get("where")
    assert where.validate({"p": {"x": 1, "y": 2}})["p"] == Point(x=1, y=2)


def test_prices_fixed_and_from_arguments() -> None:
    server = make_server()
    assert server.get("add").price_of({"a": 1}) == 5
    shout = server.get("shout")
    assert shout.price_of(shout.validate({"text": "abcd"})) == 12
    for price in (lambda a: -1, lambda a: 1.5, lambda a: True, lambda a: MAX_AMOUNT + 1,
                  lambda a: a["missing"]):
        tool = _typed_tool(price)
        with pytest.raises(ToolFailedError, match="nothing was charged"):
            tool.price_of({"text": "x"})
    for price in (-1, MAX_AMOUNT + 1, True):
        with pytest.raises(ConfigError, match="price"):
            _typed_tool(price)


def _typed_tool(price: Any) -> Tool:
    def echo(text: str) -> str:
        return text

    return Tool.from_function(echo, price=price)


def test_definition_mistakes_are_config_errors() -> None:
    def untyped(a):  # type: ignore[no-untyped-def]
        return a

    def star(*args: int) -> int:
        return 0

    with pytest.raises(ConfigError, match="no type hint"):
        Tool.from_function(untyped, price=1)
    with pytest.raises(ConfigError, match="plain named"):
        Tool.from_function(star, price=1)
    with pytest.raises(ConfigError, match="tool name"):
        Tool.from_function(_typed_tool(1).run, price=1, name="bad name")
    server = make_server()
    with pytest.raises(ConfigError, match="two tools"):
        server.add_tool(dataclasses.replace(_typed_tool(1), name="add"))
    with pytest.raises(ToolNotFoundError):
        server.get("nope")


def test_outputs_and_failures() -> None:
    server = make_server()
    assert asyncio.run(server.get("add").run({"a": 1, "b": 2})) == 3
    assert asyncio.run(server.get("shout").run({"text": "a"})) == {"text": "A"}
    with pytest.raises(ValueError):
        asyncio.run(server.get("fails").run({"n": 1}))
    with pytest.raises(ToolFailedError, match="output schema"):
        asyncio.run(server.get("lies").run({}))


def test_argument_limits() -> None:
    limits = ArgumentLimits(max_bytes=2048, max_depth=4)
    assert limits.parse(b"") == {} and limits.parse(b'{"a": [1, {"b": 2}]}') == {
        "a": [1, {"b": 2}]}
    with pytest.raises(InvalidRequestError, match="deeper than 4"):
        limits.parse(b'{"a": [[[{"b": 1}]]]}')
    with pytest.raises(PayloadTooLargeError):
        limits.parse(json.dumps({"a": "x" * 3000}).encode())
    for body in (b"[1]", b"{", b'"text"'):
        with pytest.raises(InvalidRequestError):
            limits.parse(body)
    with pytest.raises(PayloadTooLargeError):
        limits.check({"a": "x" * 3000})
    with pytest.raises(InvalidRequestError):
        limits.check([1])  # type: ignore[arg-type]


def test_price_list_for_upstream_tools() -> None:
    prices = PriceList.parse(["shout=300", "*=100"])
    assert (prices.price("shout"), prices.price("add")) == (300, 100)
    prices.check(["shout", "add"])
    with pytest.raises(ConfigError, match="have no price"):
        PriceList.parse(["shout=300"]).check(["shout", "add"])
    with pytest.raises(ConfigError, match="does not have"):
        PriceList.parse(["shuot=300", "*=1"]).check(["shout"])
    for bad in (["shout"], ["shout=-1"], ["shout=1.5"], ["=3"], ["a=1", "a=2"],
                [f"a={MAX_AMOUNT + 1}"]):
        with pytest.raises(ConfigError):
            PriceList.parse(bad)


def test_resource_urls_name_their_tool() -> None:
    assert resource_tool("mcp://tool/echo") == "echo"
    assert resource_tool("http://h:1/tools/echo") == "echo"
    assert resource_tool("http://h:1/prefix/tools/a%2Eb") == "a.b"
    assert resource_tool("http://h:1/v1/chat/completions") is None


def test_load_tool_server() -> None:
    assert load_tool_server("agoranet.testing.tool_kit:tools").name == "test-tools"
    for bad in ("agoranet.testing.tool_kit", "no_such_module_x:tools",
                "agoranet.testing.tool_kit:nothing", "agoranet.testing.tool_kit:ECHO_PRICE"):
        with pytest.raises(ConfigError):
            load_tool_server(bad)


async def test_free_server_http_routes() -> None:
    app = create_tool_app(make_server(), None, limits=ArgumentLimits(max_bytes=4096))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://tools") as http:
        listing = (await http.get("/tools")).json()
        assert [t["name"] for t in listing["data"]][:2] == ["add", "shout"]
        assert listing["data"][1]["pricing"] == "by_arguments"
        assert (await http.post("/tools/add", json={"a": 40})).json() == {"result": 42}
        answers = {
            "bad json": await http.post("/tools/add", content=b"{"),
            "schema": await http.post("/tools/add", json={"a": "x"}),
            "too large": await http.post("/tools/add", json={"a": "x" * 5000}),
            "unknown": await http.post("/tools/nope", json={}),
            "raised": await http.post("/tools/fails", json={"n": 3}),
        }
        expected = {"bad json": 400, "schema": 400, "too large": 413, "unknown": 404,
                    "raised": 422}
        for what, response in answers.items():
            assert response.status_code == expected[what], (what, response.text)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert "ValueError: no 3" in answers["raised"].json()["error"]["message"]
        assert (await http.get("/.well-known/agoranet")).status_code == 404
        for response in (await http.get("/nowhere"), await http.get("/tools/add")):
            assert response.status_code in (404, 405)
            assert response.json()["error"]["message"]
