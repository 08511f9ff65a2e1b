"""Tool-call parsers: a model's own tool-call format turned into OpenAI tool calls.

Under ``tool_choice: auto`` the model decides between text and calls, and writes calls
in the format its chat template taught it. A parser per format, registered by name
(as vLLM's ``--tool-call-parser``), reads the generated text piece by piece and splits
it into content and :class:`~agoranet.engines.base.ToolCallDelta` pieces in OpenAI's
streaming shape: a call's index, id and name first, then its arguments in pieces as
they are generated.

- ``hermes`` (Hermes 2 Pro, Qwen 2.5 and 3, the tiny model):
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call,
  after optional text.
- ``llama3_json`` (Llama 3.1 / 3.2 / 3.3 JSON calls): the whole answer is
  ``{"name": ..., "parameters": {...}}`` (optionally after ``<|python_tag|>``), several
  calls separated by ``;``; an answer that does not start with ``{`` is text.

Text that does not parse as a call (a free-text answer that happens to contain the
marker, a name not among the request's tools, a cut-off call) degrades to plain
content: a parser never fails a request. Pure logic, no model needed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from agoranet.engines.base import ToolCallDelta
from agoranet.engines.structured import join_tool_calls
from agoranet.errors import ConfigError

__all__ = [
    "HermesParser",
    "Llama3JsonParser",
    "Parsed",
    "ToolCallParser",
    "detect_tool_parser",
    "new_call_id",
    "parse_tool_calls",
    "register_tool_parser",
    "tool_parser",
    "tool_parser_names",
]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(slots=True)
class Parsed:
    """What one piece of generated text turned into."""

    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)

    def add(self, other: Parsed) -> None:
        self.content += other.content
        self.calls.extend(other.calls)


# A call object whose name comes first and whose arguments are an object, up to and
# including the arguments' opening brace.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"'
                   r"\s*:\s*\{\Z")


class _CallReader:
    """Reads one call object ``{"name": ..., "arguments": {...}}`` from text pieces.

    With the name first (the common case) the call is announced as soon as its
    arguments open, and they stream; otherwise the whole object is read, then parsed.
    """

    def __init__(self, index: int, names: Collection[str] | None,
                 make_id: Callable[[], str]) -> None:
        self.index = index
        self.raw = ""  # the object's text so far
        self.failed = False  # not a call (the raw text is content)
        self.done = False  # the object closed; a call was emitted
        self.announced = False
        self._names = names
        self._make_id = make_id
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._streaming = False  # inside the arguments object

    def feed(self, text: str) -> tuple[list[ToolCallDelta], str]:
        """The pieces ``text`` completes, and the text after the object's end."""
        out: list[ToolCallDelta] = []
        pieces: list[str] = []
        for position, char in enumerate(text):
            if not self.raw.strip() and not char.isspace() and char != "{":
                self.failed = True  # not a JSON object at all
                self.raw += text[position:]
                return [], ""
            self.raw += char
            opened = self._step(char)
            if self._streaming:
                pieces.append(char)
                if self._depth == 1 and not self._in_string:  # the arguments closed
                    self._streaming = False
            elif opened and self._depth == 2 and not self.announced:
                head = _HEAD.match(self.raw)
                if head is not None:
                    name = json.loads(head.group(1))
                    if not self._known(name):
                        self.failed = True
                        self.raw += text[position + 1:]
                        return [], ""
                    self.announced = self._streaming = True
                    out.append(ToolCallDelta(self.index, "", self._make_id(), name))
                    pieces.append("{")
            if self._depth == 0 and self.raw.strip():  # the object closed
                if not self.announced:
                    out = self._whole()
                self.done = not self.failed
                if self.failed:
                    self.raw += text[position + 1:]
                    return [], ""
                if pieces:
                    out.append(ToolCallDelta(self.index, "".join(pieces)))
                return _merged(out), text[position + 1:]
        if pieces:
            out.append(ToolCallDelta(self.index, "".join(pieces)))
        return _merged(out), ""

    def _step(self, char: str) -> bool:
        """Advance the JSON scanner; whether ``char`` opened an object or array."""
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
            return False
        if char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
            return True
        elif char in "}]":
            self._depth -= 1
        return False

    def _known(self, name: object) -> bool:
        return isinstance(name, str) and (self._names is None or name in self._names)

    def _whole(self) -> list[ToolCallDelta]:
        """A complete object whose name did not come first: parse it as a whole."""
        try:
            value = json.loads(self.raw)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self.failed = True
            return []
        name = value.get("name")
        arguments = value.get("arguments", value.get("parameters"))
        if isinstance(arguments, str):  # arguments sent as JSON text
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
        if not self._known(name) or not isinstance(arguments, dict):
            self.failed = True
            return []
        self.announced = True
        return [ToolCallDelta(self.index, json.dumps(arguments, ensure_ascii=False),
                              self._make_id(), str(name))]


def _merged(pieces: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """A call's head and its first arguments in one piece (per index)."""
    out: list[ToolCallDelta] = []
    for piece in pieces:
        if out and out[-1].index == piece.index and piece.id is None:
            last = out[-1]
            out[-1] = ToolCallDelta(last.index, last.arguments + piece.arguments, last.id,
                                    last.name)
        else:
            out.append(piece)
    return out


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that could begin ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ToolCallParser:
    """Incremental parser of one answer: :meth:`feed` text pieces, then :meth:`finish`.

    ``names``: the functions the request offers (a call to any other is content);
    ``parallel``: False keeps only the first call (OpenAI's ``parallel_tool_calls``).
    """

    name: ClassVar[str]
    # A string that ends a call, which a generation may stop at when only one call is
    # wanted (so no tokens are spent on calls that would be dropped).
    call_end: ClassVar[str | None] = None
    # How a grammar writes forced calls in this format: each call object between
    # ``call_before`` and ``call_after``, calls separated by ``call_separator``.
    call_before: ClassVar[str] = ""
    call_after: ClassVar[str] = ""
    call_separator: ClassVar[str] = "\n"

    def __init__(self, names: Collection[str] | None = None, parallel: bool = True,
                 make_id: Callable[[], str] = new_call_id) -> None:
        self.names = None if names is None else frozenset(names)
        self.parallel = parallel
        self.calls = 0  # calls emitted
        self._make_id = make_id
        self._reader: _CallReader | None = None

    def feed(self, text: str) -> Parsed:
        raise NotImplementedError

    def finish(self) -> Parsed:
        raise NotImplementedError

    def _new_reader(self) -> _CallReader:
        self._reader = _CallReader(self.calls, self.names, self._make_id)
        return self._reader

    def _read(self, text: str) -> tuple[Parsed, str, bool]:
        """Feed the current call; (its pieces, the text after it, whether it ended)."""
        reader = self._reader
        assert reader is not None
        calls, rest = reader.feed(text)
        if reader.failed:
            return Parsed(), "", True
        if reader.done:
            self.calls += 1
            self._reader = None
            return Parsed("", calls), rest, True
        return Parsed("", calls), "", False


_PARSERS: dict[str, type[ToolCallParser]] = {}
P = TypeVar("P", bound=type[ToolCallParser])


def register_tool_parser(name: str) -> Callable[[P], P]:
    """Class decorator: make a parser available under ``name``."""

    def decorate(cls: P) -> P:
        cls.name = name
        _PARSERS[name] = cls
        return cls

    return decorate


def tool_parser_names() -> list[str]:
    return sorted(_PARSERS)


def tool_parser(name: str) -> type[ToolCallParser]:
    """The parser registered as ``name`` (a :class:`ConfigError` naming the known ones)."""
    found = _PARSERS.get(name)
    if found is None:
        raise ConfigError(f"unknown tool-call parser {name!r}; known parsers: "
                          f"{', '.join(tool_parser_names())}")
    return found


def detect_tool_parser(chat_template: str | None) -> str | None:
    """The parser for the format a chat template teaches, or None if it is not known."""
    if not chat_template:
        return None
    if "<tool_call>" in chat_template:
        return "hermes"
    if "<|python_tag|>" in chat_template or '"parameters": dictionary' in chat_template:
        return "llama3_json"
    return None


def parse_tool_calls(parser: ToolCallParser, text: str) -> tuple[str, list[dict[str, Any]]]:
    """A whole answer split into its content and its calls (OpenAI's ``tool_calls``)."""
    parsed = parser.feed(text)
    parsed.add(parser.finish())
    return parsed.content, join_tool_calls(parsed.calls)


@register_tool_parser("hermes")
class HermesParser(ToolCallParser):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks after text."""

    start = "<tool_call>"
    end = "</tool_call>"
    call_end = end
    # No newlines: constrained decoding never lets a raw control character through.
    call_before = start
    call_after = end
    call_separator = ""

    def __init__(self, names: Collection[str] | None = None, parallel: bool = True,
                 make_id: Callable[[], str] = new_call_id) -> None:
        super().__init__(names, parallel, make_id)
        self._text = ""  # text not yet sent: a possible marker's beginning, blanks
        self._closing = False  # a call ended: its end marker may follow
        self._ignoring = False  # the one call allowed was made

    def feed(self, text: str) -> Parsed:
        out = Parsed()
        while text:
            if self._ignoring:
                return out
            if self._reader is not None:
                parsed, text, ended = self._read(text)
                out.add(parsed)
                if ended and self._reader is not None:  # not a call: its text is content
                    out.content += self.start + self._reader.raw
                    self._reader = None
                elif ended:
                    self._closing = True
                    self._ignoring = not self.parallel
                continue
            self._text += text
            text = ""
            if self._closing:
                stripped = self._text.lstrip()
                if stripped.startswith(self.end):
                    text = stripped[len(self.end):]
                    self._text = ""
                    self._closing = False
                    continue
                if self.end.startswith(stripped):
                    return out  # wait: the end marker may be arriving
                self._closing = False
            found = self._text.find(self.start)
            if found >= 0:
                before, text = self._text[:found], self._text[found + len(self.start):]
                self._text = ""
                out.content += before.rstrip()  # blanks next to a call are no content
                self._new_reader()
                continue
            # Hold back a possible marker's beginning, and the blanks before it.
            cut = len(self._text[:len(self._text) - _held_prefix(self._text, self.start)]
                      .rstrip())
            out.content += self._text[:cut]
            self._text = self._text[cut:]
        return out

    def finish(self) -> Parsed:
        out = Parsed()
        reader, self._reader = self._reader, None
        if reader is not None and not reader.announced:  # cut before it was a call
            out.content += self.start + reader.raw
        elif reader is not None:
            self.calls += 1  # a call cut short (its arguments stay as generated)
        rest, self._text = self._text, ""
        if not self._ignoring and (rest.strip() or not self.calls) and not self._closing:
            out.content += rest
        return out


@register_tool_parser("llama3_json")
class Llama3JsonParser(ToolCallParser):
    """An answer that is ``{"name": ..., "parameters": {...}}`` calls, ``;``-separated,
    optionally after ``<|python_tag|>``; anything else is text."""

    tag = "<|python_tag|>"
    call_separator = "; "

    def __init__(self, names: Collection[str] | None = None, parallel: bool = True,
                 make_id: Callable[[], str] = new_call_id) -> None:
        super().__init__(names, parallel, make_id)
        self._text = ""
        self._mode = "start"  # start, call, between, text, ignore

    def feed(self, text: str) -> Parsed:
        out = Parsed()
        while text:
            if self._mode == "text":
                out.content += self._text + text
                self._text = ""
                return out
            if self._mode == "ignore":
                return out
            if self._mode == "call":
                parsed, text, ended = self._read(text)
                out.add(parsed)
                if ended and self._reader is not None:  # not a call
                    failed = self._reader.raw
                    self._reader = None
                    self._mode = "text"
                    if not self.calls:
                        out.content += failed
                elif ended:
                    self._mode = "between" if self.parallel else "ignore"
                continue
            buffered, text = self._text + text, ""
            stripped = buffered.lstrip()
            if self._mode == "start":
                if stripped.startswith(self.tag):
                    buffered = stripped = stripped[len(self.tag):].lstrip()
                elif self.tag.startswith(stripped):  # blanks, or the tag arriving
                    self._text = buffered
                    return out
            else:
                stripped = stripped.lstrip("; \t\r\n")
            self._text = buffered if not stripped else ""
            if not stripped:
                return out
            if stripped.startswith("{"):
                self._mode = "call"
                self._new_reader()
                text = stripped
            elif self._mode == "start":  # an answer in words
                self._mode = "text"
                out.content += buffered
            else:  # text after the calls: not part of them
                self._mode = "ignore"
        return out

    def finish(self) -> Parsed:
        out = Parsed()
        reader, self._reader = self._reader, None
        if reader is not None and not reader.announced and not self.calls:
            out.content += reader.raw
        elif reader is not None and reader.announced:
            self.calls += 1
        if self._mode in ("start", "text") and self._text:
            out.content += self._text
        self._text = ""
        return out
