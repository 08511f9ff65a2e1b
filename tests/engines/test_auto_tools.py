"""``tool_choice: auto`` and parallel calls on the transformers engine, with the real tiny
model, which was taught the Hermes tool-call format (issue #13)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from agoranet.engines.base import Delta, Finish, GenerationRequest, Message
from agoranet.engines.hf import TransformersEngine
from agoranet.engines.structured import join_tool_calls
from agoranet.engines.toolparsers import HermesParser, Llama3JsonParser
from agoranet.tinymodel.toolcorpus import TOOLS

WEATHER_TOOL = TOOLS["get_weather"]
TIME_TOOL = TOOLS["get_time"]
OFFERED = (WEATHER_TOOL, TIME_TOOL)
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in OFFERED}


def ask(question: str, **kw: Any) -> GenerationRequest:
    base: dict[str, Any] = {"model": "tiny", "messages": (Message("user", question),),
                            "max_tokens": 120, "temperature": 0.0, "tools": OFFERED}
    base.update(kw)
    return GenerationRequest(**base)


@pytest.fixture(scope="module")
def engine(tiny_loaded: Any) -> Iterator[TransformersEngine]:
    engine = TransformersEngine(loaded=tiny_loaded, max_active=4, max_queue=8)
    yield engine
    asyncio.run(engine.aclose())


def run(engine: TransformersEngine, request: GenerationRequest
        ) -> tuple[str, list[dict[str, Any]], Finish, list[Delta]]:
    async def go() -> tuple[list[Delta], Finish]:
        deltas: list[Delta] = []
        finish = None
        async for event in engine.stream(await engine.prepare(request)):
            if isinstance(event, Delta):
                deltas.append(event)
            else:
                finish = event
        assert finish is not None
        return deltas, finish

    deltas, finish = asyncio.run(go())
    text = "".join(d.text for d in deltas)
    return text, join_tool_calls([c for d in deltas for c in d.tool_calls]), finish, deltas


def _valid(call: dict[str, Any]) -> None:
    assert call["id"].startswith("call_") and call["type"] == "function"
    name = call["function"]["name"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])


def test_the_tiny_model_declares_hermes_and_auto(engine: TransformersEngine) -> None:
    assert engine.tool_parser is HermesParser
    assert engine.supports_tool_choice_auto
    # and offers it, so that a gateway routes tool_choice auto to it
    assert "tool_choice_auto" in engine.models()[0].capabilities


def _parsed(call: dict[str, Any]) -> None:
    """A call the parser accepted: an offered function, arguments a JSON object."""
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] in SCHEMAS
    assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_a_tool_shaped_question_gets_a_call_under_auto(engine: TransformersEngine) -> None:
    for choice in (None, "auto"):
        text, calls, finish, deltas = run(engine, ask("What is the weather in Paris?",
                                                      tool_choice=choice))
        assert finish.reason == "tool_calls", text
        assert text == ""
        assert len(calls) == 1
        _parsed(calls[0])
        # Streamed: the head (index, id, name) first, then the arguments in pieces.
        pieces = [p for d in deltas for p in d.tool_calls]
        assert pieces[0].id and pieces[0].name == calls[0]["function"]["name"]
        assert all(p.id is None and p.name is None for p in pieces[1:])
        assert sum(1 for p in pieces if p.arguments) > 2


def test_the_model_mostly_picks_the_tool_the_question_needs(
        engine: TransformersEngine) -> None:
    """It need not be smart, but it did learn which tool a question is for."""
    questions = {"What is the weather in Paris?": "get_weather",
                 "What is the weather in Oslo for 3 days?": "get_weather",
                 "How is the weather in Rome today?": "get_weather",
                 "What time is it in UTC?": "get_time",
                 "What is the time in CET now?": "get_time",
                 "What time is it in PST?": "get_time"}
    right = 0
    for question, expected in questions.items():
        for tools in (OFFERED, OFFERED[::-1]):
            _, calls, _, _ = run(engine, ask(question, tools=tools))
            right += [c["function"]["name"] for c in calls] == [expected]
    assert right >= 9, f"{right} of 12"


def test_other_questions_get_text_under_auto(engine: TransformersEngine) -> None:
    for question in ("Tell me a story.", "Hello!", "Where is the cat?"):
        text, calls, finish, _ = run(engine, ask(question))
        assert calls == [] and finish.reason in ("stop", "length")
        assert len(text.split()) >= 3 and "<tool_call>" not in text, text


def test_two_questions_get_two_calls_unless_parallel_is_off(engine: TransformersEngine) -> None:
    question = "What is the weather in Rome? And what time is it in UTC?"
    _, calls, finish, _ = run(engine, ask(question))
    assert finish.reason == "tool_calls"
    assert len(calls) == 2
    for call in calls:
        _parsed(call)
    assert len({c["id"] for c in calls}) == 2
    _, one, single, _ = run(engine, ask(question, parallel_tool_calls=False))
    assert single.reason == "tool_calls" and len(one) == 1
    assert one[0]["function"] == calls[0]["function"]
    # Generation stopped at the end of the one call: no tokens spent on the second.
    assert single.completion_tokens < finish.completion_tokens


def test_auto_at_temperature_one_never_fails(engine: TransformersEngine) -> None:
    """Whatever the model writes is content or calls (a parse failure is content)."""
    questions = ["What is the weather in Oslo?", "Tell me a story.",
                 "What time is it in PST? And what is the weather in Cairo?"]
    seen_calls = 0
    for seed in range(12):
        text, calls, finish, _ = run(engine, ask(questions[seed % 3], temperature=1.0,
                                                 seed=seed))
        assert finish.reason == ("tool_calls" if calls else finish.reason)
        assert finish.reason in ("stop", "length", "tool_calls")
        assert text or calls
        for call in calls:
            assert call["function"]["name"] in SCHEMAS
            seen_calls += 1
    assert seen_calls > 0


def test_a_tool_result_is_answered_in_words(engine: TransformersEngine) -> None:
    history = (Message("user", "What is the weather in Paris?"),
               Message("assistant", "", ({"id": "call_1", "type": "function", "function": {
                   "name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}},)),
               Message("tool", "sunny", tool_call_id="call_1"))
    text, calls, finish, _ = run(engine, ask("", messages=history))
    assert calls == [] and finish.reason == "stop"
    assert "weather" in text, text  # it need not copy the result right


def test_forced_parallel_grammar_admits_one_to_four_calls(engine: TransformersEngine) -> None:
    from agoranet.engines.constrained import MAX_PARALLEL_CALLS, CallFormat
    from agoranet.engines.structured import output_mode

    book = engine.grammar_book()
    hermes = CallFormat(HermesParser.call_before, HermesParser.call_after,
                        HermesParser.call_separator)
    call = '<tool_call>{"name": "get_time", "arguments": {"zone": "utc"}}</tool_call>'
    several = output_mode(ask("x", tool_choice="required"))
    single = output_mode(ask("x", tool_choice="required", parallel_tool_calls=False))
    assert several.parallel and not single.parallel  # type: ignore[union-attr]
    compiled = book.compile(several, hermes)  # type: ignore[arg-type]
    assert compiled.wrapped and compiled.tool_names == ("get_weather", "get_time")
    for count in range(1, MAX_PARALLEL_CALLS + 1):
        grammar = book.start(compiled)
        assert grammar.accept_text(call * count) and grammar.finished() is False
    assert not book.start(compiled).accept_text(call * (MAX_PARALLEL_CALLS + 1))
    one = book.compile(single, hermes)  # type: ignore[arg-type]
    assert one.wrapped and book.start(one).accept_text(call)
    assert not book.start(one).accept_text(call * 2)
    bare = book.compile(single)  # type: ignore[arg-type]
    assert not bare.wrapped  # without a format: {"name": ..., "arguments": ...} alone
    assert not book.start(bare).accept_text(call)
    assert book.start(bare).accept_text(call.removeprefix("<tool_call>")
                                        .removesuffix("</tool_call>"))


def test_required_may_make_several_calls_unless_parallel_is_off(
        engine: TransformersEngine) -> None:
    question = "What is the weather in Rome? And what time is it in UTC?"
    several = 0
    for seed in range(4):
        _, calls, finish, _ = run(engine, ask(question, tool_choice="required",
                                              temperature=1.0, seed=seed))
        assert finish.reason == "tool_calls" and 1 <= len(calls) <= 4
        for call in calls:
            _valid(call)  # under a grammar: valid against the function's schema
        several += len(calls) > 1
    assert several > 0
    for seed in range(3):
        _, calls, finish, _ = run(engine, ask(question, tool_choice="required",
                                              parallel_tool_calls=False, temperature=1.0,
                                              seed=seed))
        assert finish.reason == "tool_calls" and len(calls) == 1
        _valid(calls[0])


def test_forced_parallel_calls_without_a_parser_are_json_objects(tiny_loaded: Any) -> None:
    """A model without a known format: forced calls are written as JSON objects one after
    another, read back by the llama3_json parser."""
    import copy
    import dataclasses

    tokenizer = copy.deepcopy(tiny_loaded.tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + "
                               "m['content'] + '<|end|>\\n' }}{% endfor %}"
                               "{{ '<|assistant|>\\n' }}")
    engine = TransformersEngine(loaded=dataclasses.replace(tiny_loaded, tokenizer=tokenizer))
    try:
        assert engine.tool_parser is None and not engine.supports_tool_choice_auto
        assert "tool_choice_auto" not in engine.models()[0].capabilities
        assert engine._forced_calls_parser() is Llama3JsonParser
        for seed in range(3):
            text, calls, finish, _ = run(engine, ask("What is the weather in Rome?",
                                                     tool_choice="required", temperature=1.0,
                                                     seed=seed, max_tokens=300))
            assert text == ""
            assert finish.reason in ("tool_calls", "length")
            if finish.reason == "tool_calls":
                assert 1 <= len(calls) <= 4
                for call in calls:
                    _valid(call)
    finally:
        asyncio.run(engine.aclose())


def test_a_configured_parser_wins(tiny_loaded: Any) -> None:
    engine = TransformersEngine(loaded=tiny_loaded, tool_call_parser="llama3_json")
    try:
        assert engine.tool_parser is Llama3JsonParser
    finally:
        asyncio.run(engine.aclose())
