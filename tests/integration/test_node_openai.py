"""A real ``agoranet node`` process driven by the official ``openai`` client."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest
from openai import OpenAI

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What did Nora do yesterday?"}]


@pytest.fixture(scope="module")
def client(tiny_node: str) -> OpenAI:
    return OpenAI(base_url=tiny_node, api_key="unused", max_retries=0)


def test_models(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    # the session's node may also list adapters uploaded by test_adapters_node
    assert ids[0] == "tiny" and all(i.startswith("tiny@adapter:") for i in ids[1:]), ids


def test_chat_non_streamed_with_usage(client: OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0)
    text = reply.choices[0].message.content or ""
    assert reply.choices[0].finish_reason == "stop"
    assert len(re.findall(r"[A-Za-z]+", text)) >= 5
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_greedy_is_identical_across_runs_and_streaming(client: OpenAI) -> None:
    first = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0)
    second = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0)
    stream = client.chat.completions.create(
        model="tiny", messages=QUESTION, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert first.choices[0].message.content == second.choices[0].message.content
    assert "".join(pieces) == first.choices[0].message.content
    assert len(pieces) > 3  # streamed token by token, not in one piece
    assert usage is not None and first.usage is not None
    assert usage.completion_tokens == first.usage.completion_tokens


def test_logprobs(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=QUESTION, temperature=0, logprobs=True, top_logprobs=2,
        max_tokens=8,
    )
    content = reply.choices[0].logprobs and reply.choices[0].logprobs.content
    assert content and len(content) == 8
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert isinstance((entry.model_extra or {}).get("token_id"), int)
        assert entry.top_logprobs[0].token == entry.token


def test_seeded_sampling_is_reproducible(client: OpenAI) -> None:
    texts = {
        client.chat.completions.create(
            model="tiny", messages=QUESTION, temperature=1.0, seed=42, max_tokens=30
        ).choices[0].message.content
        for _ in range(2)
    }
    assert len(texts) == 1


def test_completions(client: OpenAI) -> None:
    reply = client.completions.create(
        model="tiny", prompt="<|user|>\nHello!<|end|>\n<|assistant|>\n", max_tokens=12,
        temperature=0, logprobs=2,
    )
    choice = reply.choices[0]
    assert choice.text.strip()
    assert choice.logprobs is not None and len(choice.logprobs.tokens or []) == 12
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="tiny", prompt="<|user|>\nHello!<|end|>\n<|assistant|>\n", max_tokens=12,
            temperature=0, stream=True,
        )
        if c.choices
    )
    assert streamed == choice.text


def test_errors_reach_the_client_typed(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=10_000)


def test_offer_and_health(tiny_node: str) -> None:
    root = tiny_node.removesuffix("/v1")
    offer = httpx.get(f"{root}/.well-known/agoranet").json()
    model = offer["models"][0]
    assert model["id"] == "tiny" and offer["engine"] == "transformers"
    assert re.fullmatch(r"[0-9a-f]{64}", model["model_sha256"])
    assert set(model["weights_sha256"]) == {"model.safetensors"}
    assert model["sampler"] == "agoranet-torch-multinomial-v1"  # stated, so audits can replay it
    assert isinstance(model["price"]["input_per_million"], int)


def test_client_disconnect_stops_generation(tiny_node: str) -> None:
    root = tiny_node.removesuffix("/v1")
    before = httpx.get(f"{root}/health").json()
    body = {"model": "tiny", "messages": QUESTION, "stream": True, "max_tokens": 400,
            "ignore_eos": True}
    # Ask for 400 tokens that cannot end early, and read only a few lines.
    with httpx.stream("POST", f"{tiny_node}/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
    deadline = time.monotonic() + 30  # bounded: a loaded machine is slow to notice
    while time.monotonic() < deadline:
        after = httpx.get(f"{root}/health").json()
        if after["active"] == 0 and after["cancelled"] + after["completed"] > (
            before["cancelled"] + before["completed"]
        ):
            break
        time.sleep(0.05)
    assert after["active"] == 0
    assert after["cancelled"] == before["cancelled"] + 1
    # Far fewer steps ran than the 400 asked for.
    assert after["steps"] - before["steps"] < 200
