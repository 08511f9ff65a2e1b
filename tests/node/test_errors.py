"""Bad input gets OpenAI-style 4xx errors, never a 500 (in-process app, real tiny engine)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from agoranet.config import NodeSettings
from agoranet.node.app import create_app

CHAT = "/v1/chat/completions"


@pytest.fixture
async def client(tiny_engine: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(tiny_engine, NodeSettings())  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
        yield c


def assert_openai_error(response: httpx.Response, status: int, needle: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle.lower() in error["message"].lower(), error["message"]


def body(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}
    base.update(kw)
    return base


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, content=b'{"model": "tiny", "messages": [')
    assert_openai_error(response, 400, "not valid JSON")


async def test_body_must_be_an_object(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.post(CHAT, json=[1, 2]), 400, "JSON object")


async def test_unknown_model(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=body(model="gpt-9"))
    assert_openai_error(response, 404, "gpt-9")
    assert response.json()["error"]["code"] == "model_not_found"


async def test_max_tokens_over_the_context(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=body(max_tokens=100_000))
    assert_openai_error(response, 400, "maximum context length is 512")
    assert response.json()["error"]["code"] == "context_length_exceeded"


async def test_prompt_over_the_context(client: httpx.AsyncClient) -> None:
    long = " ".join(["the cat is in the park."] * 200)
    response = await client.post(CHAT, json=body(messages=[{"role": "user", "content": long}]))
    assert_openai_error(response, 400, "maximum context length")


async def test_negative_temperature(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=body(temperature=-0.5))
    assert_openai_error(response, 400, "temperature")
    assert response.json()["error"]["param"] == "temperature"


async def test_empty_messages(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.post(CHAT, json=body(messages=[])), 400, "messages")


async def test_ten_megabyte_prompt(client: httpx.AsyncClient) -> None:
    huge = "word " * (2 * 1024 * 1024)
    response = await client.post(CHAT, json=body(messages=[{"role": "user", "content": huge}]))
    assert_openai_error(response, 413, "larger than the limit")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"n": 2}, "'n'"),
        ({"top_p": 0}, "top_p"),
        ({"top_logprobs": 3}, "requires logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text content"),
        ({"continue_final_message": True, "add_generation_prompt": False}, "final assistant"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
async def test_invalid_fields(client: httpx.AsyncClient, extra: dict[str, object], needle: str) -> None:
    assert_openai_error(await client.post(CHAT, json=body(**extra)), 400, needle)


async def test_unknown_fields_are_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=body(max_tokens=3, frequency_penalty=0.1,
                                                 metadata={"a": "b"}))
    assert response.status_code == 200, response.text


async def test_unknown_route_is_openai_json(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nope"), 404, "not found")
    assert_openai_error(await client.get(CHAT), 405, "method not allowed")


async def test_completions_bad_input(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={"model": "tiny", "prompt": "x",
                                                          "echo": True})
    assert_openai_error(response, 400, "echo")
    response = await client.post("/v1/completions", json={"model": "tiny"})
    assert_openai_error(response, 400, "prompt")


async def test_tokenize_counts_and_refuses_bad_input(client: httpx.AsyncClient) -> None:
    ok = await client.post("/tokenize", json={"model": "tiny", "prompt": "the cat"})
    assert ok.status_code == 200 and ok.json()["count"] >= 2
    assert_openai_error(await client.post("/tokenize", json={"model": "tiny"}), 400, "exactly one")
    response = await client.post("/tokenize", json={"model": "x", "prompt": "a"})
    assert_openai_error(response, 404, "does not exist")
