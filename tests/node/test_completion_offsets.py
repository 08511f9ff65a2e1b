"""A /v1/completions answer's ``text_offset`` (in process, the tiny model) is OpenAI's: where
each token starts in the returned text, the same plain and streamed, also after special
tokens whose text the answer hides (``ignore_eos`` lets the model talk past ``<|end|>``)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from agoranet.config import NodeSettings
from agoranet.node.app import create_app

BODY = {"model": "tiny", "prompt": "<|user|>\nHello!<|end|>\n<|assistant|>\n",
        "max_tokens": 40, "temperature": 0, "logprobs": 1, "ignore_eos": True}


async def test_plain_and_streamed_text_offsets_are_equal(tiny_engine: Any) -> None:
    app = create_app(tiny_engine, NodeSettings(fine_tuning=False, free=True))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), \
            httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        plain = await client.post("/v1/completions", json=BODY)
        assert plain.status_code == 200, plain.text
        choice = plain.json()["choices"][0]
        text, tokens = choice["text"], choice["logprobs"]["tokens"]
        offsets = choice["logprobs"]["text_offset"]
        streamed_text, streamed_tokens, streamed = "", [], []
        async with client.stream("POST", "/v1/completions",
                                 json={**BODY, "stream": True}) as reply:
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                for part in json.loads(line[6:])["choices"]:
                    streamed_text += part["text"]
                    if part.get("logprobs"):
                        streamed_tokens += part["logprobs"]["tokens"]
                        streamed += part["logprobs"]["text_offset"]
    assert streamed_text == text and streamed_tokens == tokens
    hidden = [i for i, token in enumerate(tokens) if token.startswith("<|")]
    assert hidden and hidden[0] < len(tokens) - 1  # tokens follow a hidden one
    assert streamed == offsets
    assert offsets == sorted(offsets) and offsets[-1] <= len(text)
    for i, (token, offset) in enumerate(zip(tokens, offsets, strict=True)):
        if i not in hidden:
            assert text[offset:offset + len(token)] == token, (i, token, offset)
