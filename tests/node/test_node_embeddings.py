"""``POST /v1/embeddings`` on a node (in-process app, real engines): the answer's shape,
its encodings, the offer, and clear 4xx errors."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agoranet.config import NodeSettings
from agoranet.engines.hf import transformers_engine
from agoranet.node.app import create_app

PATH = "/v1/embeddings"


@pytest.fixture(scope="module")
def embed_engine(embedding_model: Path) -> Any:
    return transformers_engine(str(embedding_model), device="cpu")


async def client_of(engine: Any) -> httpx.AsyncClient:
    app = create_app(engine, NodeSettings(fine_tuning=False))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


@pytest.fixture
async def client(embed_engine: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_of(embed_engine) as c:
        yield c


def assert_error(response: httpx.Response, status: int, needle: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle.lower() in error["message"].lower(), error["message"]


async def test_a_batch_in_float_and_base64(client: httpx.AsyncClient) -> None:
    texts = ["hello", "the river runs long", "a"]
    floats = await client.post(PATH, json={"model": "tiny-embed", "input": texts})
    assert floats.status_code == 200, floats.text
    body = floats.json()
    assert body["object"] == "list" and body["model"] == "tiny-embed"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 64 for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(texts)
    packed = (await client.post(PATH, json={"model": "tiny-embed", "input": texts,
                                            "encoding_format": "base64"})).json()
    for plain, encoded in zip(body["data"], packed["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.array(plain["embedding"], dtype=np.float32))
    single = (await client.post(PATH, json={"model": "tiny-embed", "input": "hello"})).json()
    # alone or in a batch: the same vector (up to the last bits of CPU kernels)
    assert np.allclose(single["data"][0]["embedding"], body["data"][0]["embedding"], atol=1e-6)


async def test_the_offer_lists_embeddings(client: httpx.AsyncClient) -> None:
    offer = (await client.get("/.well-known/agoranet")).json()
    assert offer["models"][0]["capabilities"] == ["embeddings"]


async def test_bad_requests_are_openai_errors(client: httpx.AsyncClient) -> None:
    async def post(**body: Any) -> httpx.Response:
        return await client.post(PATH, json={"model": "tiny-embed", **body})

    assert_error(await post(input=[]), 400, "empty")
    assert_error(await post(input=[1.5]), 400, "input")
    assert_error(await post(input="x", dimensions=8), 400, "dimensions")
    assert_error(await post(input="x", encoding_format="int8"), 400, "encoding_format")
    assert_error(await post(input="word " * 500), 400, "maximum input length")
    assert_error(await post(input=[[5, 99999]]), 400, "vocabulary")
    assert_error(await client.post(PATH, json={"model": "nope", "input": "x"}), 404, "nope")
    chat = await client.post("/v1/chat/completions", json={
        "model": "tiny-embed", "messages": [{"role": "user", "content": "hi"}]})
    assert_error(chat, 404, "embedding model")  # as OpenAI: "not a chat model"


async def test_a_node_without_embeddings_refuses_them(tiny_engine: Any) -> None:
    async with await client_of(tiny_engine) as plain:
        offer = (await plain.get("/.well-known/agoranet")).json()
        assert "embeddings" not in offer["models"][0]["capabilities"]
        response = await plain.post(PATH, json={"model": "tiny", "input": "x"})
        assert_error(response, 400, "does not serve embeddings")
