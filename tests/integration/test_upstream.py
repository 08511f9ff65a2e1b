"""The ``upstream`` engine in front of a second real node process."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from agoranet.errors import NodeStartError
from helpers import node_process

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Tell me about the market."}]


@pytest.fixture(scope="module")
def front(tiny_node: str) -> Iterator[str]:
    with node_process(["--engine", "upstream", "--upstream-url", tiny_node,
                       "--price-in", "100", "--price-out", "300", "--free"]) as url:
        yield url


def test_answers_match_the_upstream(tiny_node: str, front: str) -> None:
    direct = OpenAI(base_url=tiny_node, api_key="x", max_retries=0)
    proxied = OpenAI(base_url=front, api_key="x", max_retries=0)
    kwargs = {"model": "tiny", "messages": QUESTION, "temperature": 0, "logprobs": True,
              "top_logprobs": 2}
    a = direct.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    b = proxied.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage == b.usage
    assert [t.token for t in a.choices[0].logprobs.content] == [
        t.token for t in b.choices[0].logprobs.content
    ]
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in proxied.chat.completions.create(stream=True, **kwargs)  # type: ignore[call-overload]
        if c.choices
    )
    assert streamed == a.choices[0].message.content


def test_completions_through_the_upstream(tiny_node: str, front: str) -> None:
    kwargs = {"model": "tiny", "prompt": "<|user|>\nHi!<|end|>\n<|assistant|>\n",
              "max_tokens": 10, "temperature": 0}
    a = OpenAI(base_url=tiny_node, api_key="x").completions.create(**kwargs)  # type: ignore[call-overload]
    b = OpenAI(base_url=front, api_key="x").completions.create(**kwargs)  # type: ignore[call-overload]
    assert a.choices[0].text == b.choices[0].text and a.usage == b.usage


def test_prompt_tokens_are_counted_by_the_upstream_tokenizer(tiny_node: str, front: str) -> None:
    body = {"model": "tiny", "messages": QUESTION}
    direct = httpx.post(f"{tiny_node.removesuffix('/v1')}/tokenize", json=body).json()
    proxied = httpx.post(f"{front.removesuffix('/v1')}/tokenize", json=body).json()
    assert direct == proxied and direct["count"] > 5


def test_limits_and_offer_are_the_fronts_own(front: str) -> None:
    client = OpenAI(base_url=front, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=5000)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=QUESTION)
    offer = httpx.get(f"{front.removesuffix('/v1')}/.well-known/agoranet").json()
    assert offer["engine"] == "upstream"
    assert offer["models"][0]["price"] == {"input_per_million": 100, "output_per_million": 300}


def test_an_unreachable_upstream_is_a_clear_cli_error() -> None:
    dead = ["--engine", "upstream", "--upstream-url", "http://127.0.0.1:9/v1"]
    with pytest.raises(NodeStartError, match="unreachable"), node_process(dead, timeout=30):
        pass
