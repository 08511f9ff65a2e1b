"""Chat fine-tuning data in OpenAI's format: one ``{"messages": [...]}`` object per line.

Loading checks every line and names the first bad one; tokenisation marks which
tokens belong to assistant turns, since the loss is taken on those alone.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agoranet.api import jsonlimits
from agoranet.errors import InvalidJSONError, TuningDataError

__all__ = ["Example", "TokenizedExample", "load_jsonl", "parse_jsonl", "split", "tokenize"]

ROLES = {"system", "developer", "user", "assistant"}


@dataclass(frozen=True)
class Example:
    line: int
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # -100 where the loss is not taken

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)


def _check_line(number: int, raw: str) -> Example:
    try:
        record = jsonlimits.loads(raw, what=f"line {number}", max_bytes=None)
    except InvalidJSONError as exc:
        problem = exc.problem.removeprefix("is not valid JSON: ")
        raise TuningDataError(f"line {number}: invalid JSON ({problem})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise TuningDataError(f"line {number}: expected an object with a 'messages' list")
    messages: list[dict[str, str]] = []
    for index, message in enumerate(record["messages"]):
        if not isinstance(message, dict):
            raise TuningDataError(f"line {number}: message {index} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise TuningDataError(
                f"line {number}: message {index} has role {role!r}; expected one of "
                + ", ".join(sorted(ROLES))
            )
        if not isinstance(content, str) or not content:
            raise TuningDataError(f"line {number}: message {index} needs non-empty text content")
        messages.append({"role": str(role), "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise TuningDataError(f"line {number}: no assistant message to learn from")
    if messages[0]["role"] == "assistant":
        raise TuningDataError(f"line {number}: the conversation starts with the assistant")
    return Example(number, messages)


def parse_jsonl(text: str) -> list[Example]:
    """Validate every non-blank line; raise on the first bad one, naming it."""
    examples = [
        _check_line(number, raw)
        for number, raw in enumerate(text.splitlines(), start=1)
        if raw.strip()
    ]
    if not examples:
        raise TuningDataError("the data set is empty: no JSON lines found")
    return examples


def load_jsonl(path: Path) -> tuple[list[Example], str]:
    """Examples from ``path`` and the sha256 of its bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TuningDataError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TuningDataError(f"{path} is not UTF-8 text") from exc
    return parse_jsonl(text), hashlib.sha256(raw).hexdigest()


def split(examples: list[Example], held_out: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded train / held-out split; at least one example on each side when possible."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    if len(order) < 2 or held_out <= 0:
        return order, []
    count = min(len(order) - 1, max(1, round(len(order) * held_out)))
    return order[count:], order[:count]


def _ids(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def tokenize(tokenizer: Any, example: Example, context_length: int) -> TokenizedExample:
    """Token ids of the whole chat, with labels only on assistant turns."""
    messages = example.messages
    input_ids = _ids(tokenizer, messages, generation_prompt=False)
    labels = [-100] * len(input_ids)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:index], generation_prompt=True)) if index else 0
        end = len(_ids(tokenizer, messages[: index + 1], generation_prompt=False))
        labels[start:end] = input_ids[start:end]
    if len(input_ids) > context_length:
        raise TuningDataError(
            f"line {example.line}: {len(input_ids)} tokens, over the model's context of "
            f"{context_length}"
        )
    return TokenizedExample(input_ids, labels)
