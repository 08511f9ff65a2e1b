"""A chat completion's answer as a Responses API response, whole or as stream events.

Output items: one ``message`` with the answer's text (when there is text, or no call),
then one ``function_call`` per tool call. A chat answer cut by ``max_tokens`` is an
``incomplete`` response (``incomplete_details.reason: max_output_tokens``). A stream is
the Responses event sequence (``response.created`` ... ``response.completed``), each
event an SSE frame with its ``event:`` line and a ``sequence_number``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["ResponseDraft", "response_id", "stream_events"]


def response_id() -> str:
    return "resp_" + secrets.token_hex(24)


def _item_id(prefix: str) -> str:
    return f"{prefix}_" + secrets.token_hex(24)


def _logprobs(chat_logprobs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Chat logprobs entries in the Responses shape (the same fields, per token)."""
    return [{"token": e.get("token"), "logprob": e.get("logprob"), "bytes": e.get("bytes"),
             "top_logprobs": [{"token": t.get("token"), "logprob": t.get("logprob"),
                               "bytes": t.get("bytes")} for t in e.get("top_logprobs") or []]}
            for e in (chat_logprobs or {}).get("content") or []]


class ResponseDraft:
    """The response object being built for one request: the echoed request fields, then
    output items and usage as the answer comes in."""

    def __init__(self, body: dict[str, Any], ident: str | None = None) -> None:
        self.id = ident or response_id()
        self.created_at = int(time.time())
        self.body = body
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.status = "in_progress"
        self.incomplete: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.agoranet: dict[str, Any] | None = None

    def finish(self, finish_reason: str | None) -> None:
        if finish_reason == "length":
            self.status, self.incomplete = "incomplete", {"reason": "max_output_tokens"}
        else:
            self.status = "completed"

    def fail(self, message: str, code: str = "server_error") -> None:
        self.status, self.error = "failed", {"code": code, "message": message}

    def set_usage(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        self.usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": completion,
                      "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": prompt + completion}

    def text_item(self, text: str, logprobs: list[dict[str, Any]] | None = None,
                  status: str = "completed") -> dict[str, Any]:
        part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
        if logprobs is not None:
            part["logprobs"] = logprobs
        return {"id": _item_id("msg"), "type": "message", "status": status,
                "role": "assistant", "content": [part]}

    @staticmethod
    def call_item(call_id: str, name: str, arguments: str,
                  status: str = "completed") -> dict[str, Any]:
        return {"id": _item_id("fc"), "type": "function_call", "status": status,
                "call_id": call_id, "name": name, "arguments": arguments}

    def add_chat_completion(self, completion: dict[str, Any], logprobs: bool) -> None:
        """Fill output and usage from a whole chat completion."""
        choice = completion["choices"][0]
        message = choice.get("message") or {}
        calls = message.get("tool_calls") or []
        text = message.get("content") or ""
        if text or not calls:
            self.output.append(self.text_item(
                text, _logprobs(choice.get("logprobs")) if logprobs else None))
        for call in calls:
            function = call.get("function") or {}
            self.output.append(self.call_item(call.get("id", ""), function.get("name", ""),
                                              function.get("arguments", "")))
        self.set_usage(completion.get("usage"))
        self.agoranet = completion.get("agoranet")
        self.finish(choice.get("finish_reason"))

    def to_json(self) -> dict[str, Any]:
        body = self.body
        text = body.get("text") or {"format": {"type": "text"}}
        response: dict[str, Any] = {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": self.status, "error": self.error,
            "incomplete_details": self.incomplete,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body.get("model"), "output": self.output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": body.get("temperature"), "text": text,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [], "top_p": body.get("top_p"),
            "truncation": body.get("truncation") or "disabled",
            "usage": self.usage, "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }
        if self.agoranet is not None:
            response["agoranet"] = self.agoranet
        return response

    def output_messages(self) -> list[dict[str, Any]]:
        """The output as chat messages, for the next turn's history."""
        text = "".join(part["text"] for item in self.output if item["type"] == "message"
                       for part in item["content"])
        calls = [{"id": item["call_id"], "type": "function",
                  "function": {"name": item["name"], "arguments": item["arguments"]}}
                 for item in self.output if item["type"] == "function_call"]
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = calls
        elif not text:
            message["content"] = ""
        return [message]


class _Events:
    """Numbered SSE frames of Responses stream events."""

    def __init__(self) -> None:
        self.sequence = 0

    def frame(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        data = json.dumps(event, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()


def _chunks(frames: bytes) -> list[dict[str, Any]]:
    """The chat chunks in some SSE bytes of the gateway's own stream (whole events)."""
    chunks = []
    for line in frames.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[6:]))
    return chunks


async def stream_events(draft: ResponseDraft, chat_frames: AsyncIterator[bytes],
                        logprobs: bool) -> AsyncIterator[bytes]:
    """The Responses events of a streamed chat answer; ``draft`` holds the whole response
    once the stream has ended (completed, incomplete or failed)."""
    events = _Events()
    yield events.frame("response.created", response=draft.to_json())
    yield events.frame("response.in_progress", response=draft.to_json())
    text_item: dict[str, Any] | None = None
    text, text_logprobs = "", list[dict[str, Any]]()
    calls: dict[int, dict[str, Any]] = {}

    def close_text() -> list[bytes]:
        nonlocal text_item
        if text_item is None:
            return []
        index = draft.output.index(text_item)
        part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
        if logprobs:
            part["logprobs"] = text_logprobs
        text_item.update(status="completed", content=[part])
        done = [events.frame("response.output_text.done", item_id=text_item["id"],
                             output_index=index, content_index=0, text=text,
                             logprobs=text_logprobs),
                events.frame("response.content_part.done", item_id=text_item["id"],
                             output_index=index, content_index=0, part=part),
                events.frame("response.output_item.done", output_index=index,
                             item=text_item)]
        text_item = None
        return done

    def open_text() -> list[bytes]:
        nonlocal text_item
        text_item = draft.text_item("", status="in_progress")
        text_item["content"] = []
        draft.output.append(text_item)
        index = len(draft.output) - 1
        return [events.frame("response.output_item.added", output_index=index,
                             item=dict(text_item)),
                events.frame("response.content_part.added", item_id=text_item["id"],
                             output_index=index, content_index=0,
                             part={"type": "output_text", "text": "", "annotations": []})]

    finish: str | None = None
    async for frames in chat_frames:
        for chunk in _chunks(frames):
            if "error" in chunk:
                for frame in close_text():
                    yield frame
                error = chunk["error"] or {}
                draft.fail(str(error.get("message", "the answer failed")),
                           str(error.get("code") or "server_error"))
                yield events.frame("response.failed", response=draft.to_json())
                return
            if chunk.get("usage"):
                draft.set_usage(chunk["usage"])
            draft.agoranet = chunk.get("agoranet", draft.agoranet)
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                entries = _logprobs(choice.get("logprobs")) if logprobs else []
                # A token without text (the end's) keeps its logprobs, as in a whole
                # answer's message; none opens a message once calls have closed the text.
                bare = entries and not delta.get("tool_calls") and (text_item or not calls)
                if piece or bare:
                    if text_item is None:
                        for frame in open_text():
                            yield frame
                    assert text_item is not None
                    text += piece or ""
                    text_logprobs += entries
                    yield events.frame("response.output_text.delta", item_id=text_item["id"],
                                       output_index=draft.output.index(text_item),
                                       content_index=0, delta=piece or "", logprobs=entries)
                for call in delta.get("tool_calls") or []:
                    for frame in close_text():
                        yield frame
                    index = call.get("index", 0)
                    function = call.get("function") or {}
                    item = calls.get(index)
                    if item is None:
                        item = draft.call_item(call.get("id") or _item_id("call"),
                                               function.get("name") or "", "", "in_progress")
                        calls[index] = item
                        draft.output.append(item)
                        yield events.frame("response.output_item.added",
                                           output_index=len(draft.output) - 1, item=dict(item))
                    if function.get("arguments"):
                        item["arguments"] += function["arguments"]
                        yield events.frame("response.function_call_arguments.delta",
                                           item_id=item["id"],
                                           output_index=draft.output.index(item),
                                           delta=function["arguments"])
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    for frame in close_text():
        yield frame
    if not draft.output:  # an empty answer is still one (empty) message
        for frame in [*open_text(), *close_text()]:
            yield frame
    for item in calls.values():
        index = draft.output.index(item)
        item["status"] = "completed"
        yield events.frame("response.function_call_arguments.done", item_id=item["id"],
                           output_index=index, name=item["name"], arguments=item["arguments"])
        yield events.frame("response.output_item.done", output_index=index, item=item)
    draft.finish(finish)
    kind = "response.incomplete" if draft.status == "incomplete" else "response.completed"
    yield events.frame(kind, response=draft.to_json())
