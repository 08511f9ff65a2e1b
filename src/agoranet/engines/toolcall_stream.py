"""Turn generated text into OpenAI tool-call deltas: a grammar-forced call, or the
calls a parser finds under ``tool_choice: auto`` (:func:`parsed_tool_calls`).

With one function the generated text is the call's arguments; with several it is
``{"name": "<name>", "arguments": <arguments>}`` (see
:func:`agoranet.engines.constrained.tool_call_prefix`). Either way the stream gets the
call's index, id and name first, then the arguments in pieces as they are generated,
and a grammar that ran to its end finishes with ``tool_calls``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

from agoranet.engines.base import Delta, Finish, StreamEvent, ToolCallDelta
from agoranet.engines.toolparsers import ToolCallParser, new_call_id

__all__ = ["ToolCallSplitter", "as_tool_call", "new_call_id", "parsed_tool_calls"]

_PREFIX = re.compile(r'\{"name": ("(?:[A-Za-z0-9_-]+)"), "arguments": ')


def _merged(pieces: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """One piece per call and event (a call's head and its first arguments together)."""
    if len(pieces) < 2:
        return pieces
    first = pieces[0]
    return [ToolCallDelta(first.index, "".join(p.arguments for p in pieces), first.id,
                          first.name)]


class ToolCallSplitter:
    """Text in, tool-call pieces out; ``names`` are the functions the grammar allows."""

    def __init__(self, names: tuple[str, ...], call_id: str | None = None) -> None:
        self._call_id = call_id or new_call_id()
        self._wrapped = len(names) > 1
        self._name: str | None = None if self._wrapped else names[0]
        self._buffer = ""  # text not yet sent: the wrapper's head, or its possible closing brace
        self._announced = False

    def _head(self) -> ToolCallDelta:
        self._announced = True
        return ToolCallDelta(0, "", id=self._call_id, name=self._name)

    def feed(self, text: str) -> list[ToolCallDelta]:
        return _merged(self._feed(text))

    def _feed(self, text: str) -> list[ToolCallDelta]:
        if not self._wrapped:
            out = [] if self._announced else [self._head()]
            if text:
                out.append(ToolCallDelta(0, text))
            return out
        self._buffer += text
        out = []
        if self._name is None:
            found = _PREFIX.match(self._buffer)
            if found is None:
                return []
            self._name = str(json.loads(found.group(1)))
            self._buffer = self._buffer[found.end():]
            out.append(self._head())
        # Hold back the last character: it may be the wrapper's closing brace.
        if len(self._buffer) > 1:
            out.append(ToolCallDelta(0, self._buffer[:-1]))
            self._buffer = self._buffer[-1:]
        return out

    def finish(self, complete: bool) -> list[ToolCallDelta]:
        """The rest; ``complete``: the grammar ran to its end (so a held-back ``}`` is the
        wrapper's own)."""
        out = [] if self._announced or self._wrapped else [self._head()]
        rest, self._buffer = self._buffer, ""
        if self._wrapped and self._name is None:
            return out  # cut before the name was complete: there is no call to report
        if complete and self._wrapped:
            rest = rest.removesuffix("}")
        if rest:
            out.append(ToolCallDelta(0, rest))
        return _merged(out)


async def as_tool_call(events: AsyncIterator[StreamEvent], names: tuple[str, ...]
                       ) -> AsyncIterator[StreamEvent]:
    """``events`` of a forced tool call, with its text turned into tool-call pieces."""
    splitter = ToolCallSplitter(names)
    try:
        async for event in events:
            if isinstance(event, Delta):
                pieces = splitter.feed(event.text)
                if pieces or event.tokens:
                    yield Delta("", event.tokens, tuple(pieces))
                continue
            complete = event.reason == "stop"
            pieces = splitter.finish(complete)
            if pieces:
                yield Delta("", (), tuple(pieces))
            yield Finish("tool_calls" if complete else event.reason, event.prompt_tokens,
                         event.completion_tokens, event.commitments)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def parsed_tool_calls(events: AsyncIterator[StreamEvent], parser: ToolCallParser,
                            content: bool = True) -> AsyncIterator[StreamEvent]:
    """``events`` of an answer, split by ``parser`` into content and tool-call pieces;
    an answer that made a call and ended by itself finishes with ``tool_calls``.
    ``content`` False: the answer is calls only (forced by a grammar), so text that is
    not (yet) a call, e.g. one cut by ``max_tokens`` before its name, is dropped."""
    try:
        async for event in events:
            if isinstance(event, Delta):
                parsed = parser.feed(event.text)
                text = parsed.content if content else ""
                if text or parsed.calls or event.tokens:
                    yield Delta(text, event.tokens, tuple(parsed.calls))
                continue
            parsed = parser.finish()
            text = parsed.content if content else ""
            if text or parsed.calls:
                yield Delta(text, (), tuple(parsed.calls))
            reason = "tool_calls" if parser.calls and event.reason == "stop" else event.reason
            yield Finish(reason, event.prompt_tokens, event.completion_tokens,
                         event.commitments)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
