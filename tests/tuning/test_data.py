"""Bad training data gets a clear error naming the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agoranet.errors import TuningDataError
from agoranet.tuning.data import load_jsonl, parse_jsonl, split, tokenize

GOOD = json.dumps({"messages": [{"role": "user", "content": "Hi!"},
                                {"role": "assistant", "content": "Hello."}]})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("\n  \n", "empty"),
        (GOOD + "\n{not json", "line 2: invalid JSON"),
        (GOOD + "\n" + GOOD + "\n[1, 2]", "line 3: expected an object with a 'messages' list"),
        (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}), "line 1: message 0 has role 'wizard'"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "line 1: no assistant message"),
        (json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}),
         "line 1: message 0 needs non-empty text content"),
        (json.dumps({"messages": [{"role": "assistant", "content": "a"}]}), "starts with the assistant"),
    ],
)
def test_bad_lines_are_named(text: str, needle: str) -> None:
    with pytest.raises(TuningDataError, match=needle):
        parse_jsonl(text)


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(TuningDataError, match="cannot read"):
        load_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TuningDataError, match="not UTF-8"):
        load_jsonl(tmp_path / "bin.jsonl")


def test_split_is_seeded_and_keeps_both_sides() -> None:
    examples = parse_jsonl("\n".join([GOOD] * 20))
    train, held = split(examples, 0.1, seed=1)
    assert (len(train), len(held)) == (18, 2)
    assert [e.line for e in held] == [e.line for e in split(examples, 0.1, seed=1)[1]]
    assert split(examples[:1], 0.1, seed=1) == (examples[:1], [])


def test_labels_cover_assistant_turns_only(tiny_loaded: object) -> None:
    tokenizer = tiny_loaded.tokenizer  # type: ignore[attr-defined]
    example = parse_jsonl(json.dumps({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye!"},
        {"role": "assistant", "content": "Good day."}]}))[0]
    tokens = tokenize(tokenizer, example, 512)
    trained = tokenizer.decode([i for i, label in zip(tokens.input_ids, tokens.labels,
                                                      strict=True) if label != -100])
    assert trained == "Hello.<|end|>\nGood day.<|end|>\n"


def test_sequences_over_the_context_name_the_line(tiny_loaded: object) -> None:
    long = json.dumps({"messages": [{"role": "user", "content": "the cat " * 400},
                                    {"role": "assistant", "content": "ok"}]})
    example = parse_jsonl(GOOD + "\n" + long)[1]
    with pytest.raises(TuningDataError, match=r"line 2: .* over the model's context of 512"):
        tokenize(tiny_loaded.tokenizer, example, 512)  # type: ignore[attr-defined]
