"""Tool-call parsers: model text in, content and OpenAI tool-call pieces out (issue #13)."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator

import pytest

from agoranet.engines.base import Delta, Finish, StreamEvent, ToolCallDelta
from agoranet.engines.structured import join_tool_calls
from agoranet.engines.toolcall_stream import parsed_tool_calls
from agoranet.engines.toolparsers import (
    HermesParser,
    Llama3JsonParser,
    Parsed,
    ToolCallParser,
    detect_tool_parser,
    parse_tool_calls,
    tool_parser,
    tool_parser_names,
)
from agoranet.errors import ConfigError

NAMES = {"get_weather", "get_time"}
WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}'
TIME = '{"name": "get_time", "arguments": {"zone": "utc"}}'


def _ids() -> Iterator[str]:
    return (f"call_{i}" for i in itertools.count())


def _parser(cls: type[ToolCallParser], parallel: bool = True) -> ToolCallParser:
    ids = _ids()
    return cls(NAMES, parallel=parallel, make_id=lambda: next(ids))


def _stream(parser: ToolCallParser, text: str, size: int) -> tuple[str, list[ToolCallDelta]]:
    """``text`` fed in pieces of ``size`` characters."""
    out = Parsed()
    for start in range(0, len(text), size):
        out.add(parser.feed(text[start:start + size]))
    out.add(parser.finish())
    return out.content, out.calls


def _check_order(pieces: list[ToolCallDelta]) -> None:
    """OpenAI's streaming shape: per index, id and name first, then argument pieces."""
    seen: set[int] = set()
    for piece in pieces:
        if piece.index not in seen:
            assert piece.id is not None and piece.name is not None, piece
            seen.add(piece.index)
        else:
            assert piece.id is None and piece.name is None, piece
    assert sorted(seen) == list(range(len(seen)))


HERMES_CASES = {
    "one call": (f"<tool_call>\n{WEATHER}\n</tool_call>", "",
                 [("get_weather", {"city": "Paris", "days": 2})]),
    "text then call": (f"Let me look.\n<tool_call>\n{TIME}\n</tool_call>", "Let me look.",
                       [("get_time", {"zone": "utc"})]),
    "two calls": (f"<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{TIME}\n</tool_call>",
                  "", [("get_weather", {"city": "Paris", "days": 2}),
                       ("get_time", {"zone": "utc"})]),
    "two calls, no blanks (a grammar's)": (
        f"<tool_call>{WEATHER}</tool_call><tool_call>{TIME}</tool_call>", "",
        [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {"zone": "utc"})]),
    "plain text": ("The weather is sunny. Take a hat.", "The weather is sunny. Take a hat.",
                   []),
    "text with a brace and a lone <": ("a < b and {x} }", "a < b and {x} }", []),
    "arguments before name": ('<tool_call>{"arguments": {"zone": "cet"}, "name": "get_time"}'
                              "</tool_call>", "", [("get_time", {"zone": "cet"})]),
    "arguments as JSON text": ('<tool_call>{"name": "get_time", "arguments": "{\\"zone\\": '
                               '\\"pst\\"}"}</tool_call>', "", [("get_time", {"zone": "pst"})]),
    "braces and quotes inside strings": (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "P}a{r\\"is", "days": 1}}'
        "</tool_call>", "", [("get_weather", {"city": 'P}a{r"is', "days": 1})]),
    "no end marker": (f"<tool_call>\n{TIME}", "", [("get_time", {"zone": "utc"})]),
}


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("case", sorted(HERMES_CASES))
def test_hermes_parses_in_any_pieces(case: str, size: int) -> None:
    text, content, expected = HERMES_CASES[case]
    got, pieces = _stream(_parser(HermesParser), text, size)
    assert got == content
    _check_order(pieces)
    calls = join_tool_calls(pieces)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] \
        == expected
    assert [c["id"] for c in calls] == [f"call_{i}" for i in range(len(expected))]


MALFORMED = [
    "<tool_call>I will now call the tool</tool_call>",
    '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not an offered tool
    '<tool_call>{"name": "get_time"}</tool_call>',  # no arguments
    '<tool_call>{"name": "get_time", "arguments": {"zone": "utc"',  # cut: see the next test
    "<tool_call>[1, 2]</tool_call>",
    '<tool_call>{"name": 5, "arguments": {}}</tool_call>',
    "<tool_call>{not json}</tool_call>",
    "<tool_call>",
    "<tool_",
]


@pytest.mark.parametrize("size", [1, 4, 1000])
@pytest.mark.parametrize("text", MALFORMED[:3] + MALFORMED[4:])
def test_hermes_malformed_output_degrades_to_content(text: str, size: int) -> None:
    content, pieces = _stream(_parser(HermesParser), text, size)
    assert pieces == []
    assert content == text


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_a_call_cut_off_keeps_its_partial_arguments(size: int) -> None:
    """max_tokens cut the call: announced, arguments as far as generated (like OpenAI)."""
    content, pieces = _stream(_parser(HermesParser), MALFORMED[3], size)
    assert content == ""
    calls = join_tool_calls(pieces)
    assert calls[0]["function"] == {"name": "get_time", "arguments": '{"zone": "utc"'}


def test_arguments_arrive_in_pieces_after_the_head() -> None:
    parser = _parser(HermesParser)
    text = f"<tool_call>\n{WEATHER}\n</tool_call>"
    events = [parser.feed(ch) for ch in text]
    heads = [i for i, e in enumerate(events) if any(c.id for c in e.calls)]
    argument_events = [i for i, e in enumerate(events) if any(c.arguments for c in e.calls)]
    assert len(heads) == 1
    assert len(argument_events) > 10
    assert heads[0] <= argument_events[0]
    assert all(e.content == "" for e in events)


def test_a_failed_call_then_a_good_one() -> None:
    text = f"<tool_call>oops</tool_call> then <tool_call>{TIME}</tool_call>"
    content, pieces = _stream(_parser(HermesParser), text, 3)
    assert content == "<tool_call>oops</tool_call> then"
    assert [c["function"]["name"] for c in join_tool_calls(pieces)] == ["get_time"]
    assert pieces[0].index == 0


def test_parallel_false_keeps_only_the_first_call() -> None:
    text = f"<tool_call>{WEATHER}</tool_call>\n<tool_call>{TIME}</tool_call>"
    for cls in (HermesParser, Llama3JsonParser):
        body = text if cls is HermesParser else f"{WEATHER}; {TIME}"
        content, pieces = _stream(_parser(cls, parallel=False), body, 4)
        assert content == ""
        assert [c["function"]["name"] for c in join_tool_calls(pieces)] == ["get_weather"]
        content, pieces = _stream(_parser(cls, parallel=True), body, 4)
        assert len(join_tool_calls(pieces)) == 2
    assert HermesParser.call_end == "</tool_call>"


def test_no_names_accepts_any_function() -> None:
    parser = HermesParser(None)
    content, calls = parse_tool_calls(parser, '<tool_call>{"name": "x", "arguments": {}}'
                                              "</tool_call>")
    assert content == "" and calls[0]["function"] == {"name": "x", "arguments": "{}"}
    assert calls[0]["id"].startswith("call_") and parser.calls == 1


LLAMA_CASES = {
    "one call": ('{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}', "",
                 [("get_weather", {"city": "Paris", "days": 2})]),
    "python tag": ('<|python_tag|>{"name": "get_time", "parameters": {"zone": "utc"}}', "",
                   [("get_time", {"zone": "utc"})]),
    "two calls": ('{"name": "get_time", "parameters": {"zone": "utc"}}; '
                  '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 1}}', "",
                  [("get_time", {"zone": "utc"}), ("get_weather", {"city": "Oslo", "days": 1})]),
    "text": ("  It is sunny in {Paris}.", "  It is sunny in {Paris}.", []),
    "JSON that is no call": ('{"city": "Paris"}', '{"city": "Paris"}', []),
    "unknown function": ('{"name": "rm", "parameters": {}}', '{"name": "rm", "parameters": {}}',
                         []),
    "blank": ("  ", "  ", []),
}


@pytest.mark.parametrize("size", [1, 3, 1000])
@pytest.mark.parametrize("case", sorted(LLAMA_CASES))
def test_llama3_json(case: str, size: int) -> None:
    text, content, expected = LLAMA_CASES[case]
    got, pieces = _stream(_parser(Llama3JsonParser), text, size)
    assert got == content
    _check_order(pieces)
    calls = join_tool_calls(pieces)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] \
        == expected


def test_registry_and_detection() -> None:
    assert {"hermes", "llama3_json"} <= set(tool_parser_names())
    assert tool_parser("hermes") is HermesParser
    assert tool_parser("llama3_json") is Llama3JsonParser
    with pytest.raises(ConfigError, match="hermes"):
        tool_parser("nope")
    assert detect_tool_parser("{{ '<tool_call>' }}") == "hermes"
    assert detect_tool_parser("{{- '<|python_tag|>' }}") == "llama3_json"
    assert detect_tool_parser("{{ messages }}") is None
    assert detect_tool_parser(None) is None


async def _events(pieces: list[str], reason: str) -> AsyncIterator[StreamEvent]:
    for piece in pieces:
        yield Delta(piece)
    yield Finish(reason, 3, len(pieces))  # type: ignore[arg-type]


async def _run(pieces: list[str], reason: str) -> tuple[list[Delta], Finish]:
    deltas: list[Delta] = []
    finish = None
    async for event in parsed_tool_calls(_events(pieces, reason), _parser(HermesParser)):
        if isinstance(event, Delta):
            deltas.append(event)
        else:
            finish = event
    assert finish is not None
    return deltas, finish


async def test_the_stream_wrapper_finishes_with_tool_calls() -> None:
    text = f"<tool_call>\n{WEATHER}\n</tool_call>"
    deltas, finish = await _run([text[i:i + 4] for i in range(0, len(text), 4)], "stop")
    assert finish.reason == "tool_calls" and finish.completion_tokens > 1
    assert all(d.text == "" for d in deltas)
    calls = join_tool_calls([c for d in deltas for c in d.tool_calls])
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "days": 2}


async def test_the_stream_wrapper_keeps_text_and_length() -> None:
    deltas, finish = await _run(["Hello", " there", "."], "stop")
    assert finish.reason == "stop" and "".join(d.text for d in deltas) == "Hello there."
    deltas, finish = await _run(["<tool_call>", '{"name": "get_time", "arg'], "length")
    assert finish.reason == "length"  # cut before it was a call: its text is content
    assert "".join(d.text for d in deltas) == '<tool_call>{"name": "get_time", "arg'
    deltas, finish = await _run(["<tool_call>", '{"name": "get_time", "arguments": {'],
                                "length")
    assert finish.reason == "length"
    assert join_tool_calls([c for d in deltas for c in d.tool_calls])[0]["function"] == {
        "name": "get_time", "arguments": "{"}
