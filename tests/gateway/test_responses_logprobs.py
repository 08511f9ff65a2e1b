"""A streamed Response carries the same logprobs as a whole one, the end token's included
(a token without text: the gateway relays it as an empty-text piece with logprobs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from agoranet.gateway.responses_output import ResponseDraft, stream_events

HI = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}
END = {"content": [{"token": "<|end|>", "logprob": -0.2, "bytes": None,
                    "top_logprobs": [{"token": "<|end|>", "logprob": -0.2, "bytes": None}]}]}


def _chunk(delta: dict[str, Any], logprobs: dict[str, Any] | None = None,
           finish: str | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {"choices": [choice]}


def _streamed(chunks: list[dict[str, Any]]) -> tuple[ResponseDraft, list[dict[str, Any]]]:
    async def frames() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def collect(draft: ResponseDraft) -> list[bytes]:
        return [f async for f in stream_events(draft, frames(), logprobs=True)]

    draft = ResponseDraft({"model": "tiny"})
    events = [json.loads(f.decode().split("\n", 1)[1].removeprefix("data: "))
              for f in asyncio.run(collect(draft))]
    return draft, events


def _whole(content: str, logprobs: list[dict[str, Any]]) -> ResponseDraft:
    draft = ResponseDraft({"model": "tiny"})
    draft.add_chat_completion({"choices": [{
        "index": 0, "message": {"role": "assistant", "content": content},
        "finish_reason": "stop", "logprobs": {"content": logprobs}}]}, logprobs=True)
    return draft


def _parts(draft: ResponseDraft) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(part["text"], part["logprobs"]) for item in draft.output
            if item["type"] == "message" for part in item["content"]]


def test_the_end_tokens_logprobs_reach_a_streamed_response() -> None:
    streamed, events = _streamed([
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hi"}, HI), _chunk({"content": ""}, END),
        _chunk({}, finish="stop")])
    whole = _whole("Hi", HI["content"] + END["content"])
    assert _parts(streamed) == _parts(whole)
    assert len(_parts(streamed)[0][1]) == 2
    done = [e for e in events if e["type"] == "response.output_text.done"]
    assert [e["logprobs"] for e in done] == [_parts(whole)[0][1]]
    assert events[-1]["type"] == "response.completed"


def test_an_answer_of_only_the_end_token_is_one_message_with_its_logprobs() -> None:
    streamed, _ = _streamed([_chunk({"role": "assistant", "content": ""}),
                             _chunk({"content": ""}, END), _chunk({}, finish="stop")])
    assert _parts(streamed) == _parts(_whole("", END["content"]))
    assert [item["type"] for item in streamed.output] == ["message"]


def test_a_call_only_answer_gets_no_message_from_the_end_tokens_logprobs() -> None:
    call = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "f", "arguments": "{}"}}]}
    streamed, _ = _streamed([_chunk({"role": "assistant", "content": ""}), _chunk(call),
                             _chunk({"content": ""}, END), _chunk({}, finish="tool_calls")])
    assert [item["type"] for item in streamed.output] == ["function_call"]
