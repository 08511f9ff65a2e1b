"""Incremental detokenisation that keeps spaces and multi-byte characters whole."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["IncrementalDetokenizer"]

_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    """Turn token ids into text one at a time.

    Decodes a small window (the previous token(s) plus the new one) and emits the
    difference, so tokenisers that drop a leading space when decoding a lone token
    still produce the right text, and a character split across byte tokens is
    emitted only once complete. Seeding the window with the prompt's last tokens
    makes a continuation of a partial answer start exactly right.
    """

    def __init__(self, tokenizer: Any, context_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = list(context_ids[-4:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        if full_text.endswith(_INCOMPLETE) or len(full_text) <= len(prefix_text):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return full_text[len(prefix_text) :]

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))
