"""Constrained decoding with xgrammar: a per-sequence logits mask from a grammar.

A :class:`GrammarBook` (one per loaded tokenizer) compiles each JSON schema once into
an xgrammar grammar, cached by the schema's canonical JSON; a :class:`GrammarMatcher`
per sequence masks every step's logits to the tokens the grammar allows next and
advances on the chosen token. Whatever the model and the temperature, the text is then
valid against the schema, unless ``max_tokens`` cuts it first (``finish_reason``
``length``).

Bounded by construction: JSON is generated without free whitespace (``", "`` and
``": "`` separators only), and a string the schema leaves unbounded is capped at
:data:`DEFAULT_MAX_STRING` characters, so a small model cannot wander forever inside
a string or a run of blanks. The text is kept valid UTF-8 without raw control
characters by a second mask (:class:`Utf8Guard`): xgrammar's character classes admit
overlong and surrogate encodings, and its length-bounded strings admit control bytes,
all of which JSON (and a client's decoder) refuses.

Only the part of JSON Schema that the grammar enforces is accepted:
:func:`unenforceable` names the first keyword outside it, and the request gets a 400
rather than an answer that might not validate.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr
from jsonschema import Draft202012Validator

from agoranet.engines.structured import ForcedToolCall, JsonOutput, ToolFunction
from agoranet.errors import EngineError, InvalidRequestError

__all__ = [
    "DEFAULT_MAX_STRING",
    "GRAMMAR_ENGINE",
    "MAX_PARALLEL_CALLS",
    "CallFormat",
    "CompiledOutput",
    "GrammarBook",
    "SequenceGrammar",
    "Utf8Guard",
    "output_grammar",
    "tool_call_prefix",
    "unenforceable",
]

GRAMMAR_ENGINE = f"xgrammar-{xgr.__version__}" if hasattr(xgr, "__version__") else "xgrammar"
DEFAULT_MAX_STRING = 256
_SEPARATORS = (", ", ": ")
_CACHE_SIZE = 256
# Calls one forced answer may make when parallel calls are allowed (the grammar grows
# with it).
MAX_PARALLEL_CALLS = 4

# Keywords that do not constrain (annotations) and those the grammar enforces.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id",
                          "$comment", "deprecated", "readOnly", "writeOnly", "strict"})
_ENFORCED = frozenset({
    "type", "enum", "const", "anyOf", "$ref", "$defs", "definitions",
    "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "items", "prefixItems", "minItems", "maxItems",
    "properties", "required", "additionalProperties", "patternProperties",
    "minProperties", "maxProperties",
})
# Keywords of JSON Schema (2020-12 and drafts 4-7) that constrain but are not enforced.
_REFUSED = {
    "oneOf": "use anyOf", "allOf": "merge the subschemas", "not": None,
    "if": None, "then": None, "else": None, "contains": None, "minContains": None,
    "maxContains": None, "propertyNames": None, "dependentRequired": None,
    "dependentSchemas": None, "dependencies": None, "unevaluatedProperties": None,
    "unevaluatedItems": None, "additionalItems": "use prefixItems and items",
    "$dynamicRef": None, "$dynamicAnchor": None, "$recursiveRef": None,
    "$anchor": "use $defs and $ref", "contentEncoding": None, "contentMediaType": None,
    "contentSchema": None,
}
# Keywords that apply to one JSON type: without a "type", xgrammar would not apply them.
_TYPED = {
    "minLength": "string", "maxLength": "string", "pattern": "string", "format": "string",
    "minimum": "number", "maximum": "number", "exclusiveMinimum": "number",
    "exclusiveMaximum": "number", "multipleOf": "number",
    "items": "array", "prefixItems": "array", "minItems": "array", "maxItems": "array",
    "uniqueItems": "array", "properties": "object", "required": "object",
    "additionalProperties": "object", "patternProperties": "object",
    "minProperties": "object", "maxProperties": "object",
}
_XGRAMMAR_WHERE = re.compile(r"\[[\d:]+\] \S+:\d+: ")  # "[11:20:53] file.cc:42: "
# Formats whose grammar admits only valid values (xgrammar's date, time, date-time and
# ipv4 patterns admit e.g. February 30th, second 60 and leading zeros).
_FORMATS = frozenset({"email", "uuid", "ipv6"})


_RANGE = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def unenforceable(schema: object, path: str = "") -> str | None:
    """Why constrained decoding cannot guarantee ``schema`` (the first reason), or None."""
    if isinstance(schema, bool):
        return None if schema else f"'{path or '/'}' is the schema false, which nothing matches"
    if not isinstance(schema, Mapping):
        return f"'{path or '/'}' is not a schema"
    here = path or "/"
    for key, value in schema.items():
        if key in _REFUSED:
            hint = _REFUSED[key]
            return f"'{key}' at '{here}'" + (f" ({hint})" if hint else "")
        if key == "uniqueItems" and value is True:
            return f"'uniqueItems' at '{here}'"
        if key == "uniqueItems":
            continue
        if key == "multipleOf":
            if any(bound in schema for bound in _RANGE):  # xgrammar drops it beside a range
                return f"'multipleOf' with a range at '{here}' (use one or the other)"
            if schema.get("type") == "integer" and isinstance(value, int):
                continue
            return f"'multipleOf' at '{here}' (only on integers, by an integer)"
        if key == "format" and value not in _FORMATS:
            return f"'format': {value!r} at '{here}' (supported: {', '.join(sorted(_FORMATS))})"
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
            return f"'$ref' to {value!r} at '{here}' (only references inside the schema)"
        if key == "items" and isinstance(value, list):
            return f"'items' as a list at '{here}' (use prefixItems)"
    reason = _combination(schema, here)
    if reason is not None:
        return reason
    for key, child in _children(schema):
        reason = unenforceable(child, f"{path}/{key}")
        if reason is not None:
            return reason
    required = schema.get("required") or []
    properties = schema.get("properties") or {}
    missing = [r for r in required if r not in properties]
    if missing:
        return (f"'required' at '{here}' lists {missing[0]!r}, which is not in 'properties' "
                "(declare it under 'properties')")
    return None


def _combination(schema: Mapping[str, Any], here: str) -> str | None:
    """Keywords that xgrammar would let one win over the other, or not apply."""
    typed = [k for k in schema if k in _TYPED]
    if "enum" in schema or "const" in schema:
        others = [k for k in schema if k in _TYPED or k in ("anyOf", "$ref")]
        if "enum" in schema and "const" in schema:
            others = ["const"]
        if others:
            return (f"'{others[0]}' beside 'enum'/'const' at '{here}' (only 'type' and "
                    "annotations may go with them)")
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if "type" in schema:
            for value in values:
                if not Draft202012Validator({"type": schema["type"]}).is_valid(value):
                    return f"the value {value!r} at '{here}', which is not of its 'type'"
        return None
    for combinator in ("anyOf", "$ref"):
        if combinator in schema:
            others = [k for k in schema if k in _TYPED or k == "type"
                      or (k == "anyOf" and combinator == "$ref")]
            if others:
                return (f"'{others[0]}' beside '{combinator}' at '{here}' (move it into the "
                        "referenced or alternative schemas)")
    shapes = [k for k in ("pattern", "format") if k in schema]
    lengths = [k for k in ("minLength", "maxLength") if k in schema]
    if shapes and (lengths or len(shapes) > 1):
        return (f"'{(lengths or shapes)[-1]}' beside '{shapes[0]}' at '{here}' (a string "
                "can be constrained by a pattern, a format or lengths, one of them)")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = schema.get(key)
        if isinstance(bound, float) and (abs(bound) > 1e15 or round(bound, 6) != bound):
            return (f"'{key}': {bound!r} at '{here}' (bounds need at most 6 decimals and "
                    "at most 15 digits)")
        if isinstance(bound, int) and abs(bound) > 10**15:
            return f"'{key}': {bound!r} at '{here}' (bounds need at most 15 digits)"
    if typed and "type" not in schema:
        return (f"'{typed[0]}' at '{here}' without a 'type' (say 'type': "
                f"'{'integer' if _TYPED[typed[0]] == 'number' else _TYPED[typed[0]]}' or "
                "another)")
    return None


def _children(schema: Mapping[str, Any]) -> Iterable[tuple[str, object]]:
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        for name, child in (schema.get(key) or {}).items():
            yield f"{key}/{name}", child
    for key in ("additionalProperties", "items"):
        if isinstance(schema.get(key), Mapping):
            yield key, schema[key]
    for key in ("anyOf", "prefixItems"):
        for index, child in enumerate(schema.get(key) or []):
            yield f"{key}/{index}", child


def _bounded(schema: Any, max_string: int) -> Any:
    """A copy of ``schema`` whose unbounded strings are capped at ``max_string``."""
    if isinstance(schema, list):
        return [_bounded(s, max_string) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded(v, max_string) if k not in ("enum", "const", "default", "examples")
           else copy.deepcopy(v) for k, v in schema.items()}
    kind = out.get("type")
    is_string = kind == "string" or (isinstance(kind, list) and "string" in kind)
    if is_string and not ({"maxLength", "enum", "const", "format", "pattern"} & out.keys()):
        out["maxLength"] = max(max_string, int(out.get("minLength", 0)))
    return out


def tool_call_prefix(name: str) -> str:
    """The text before the arguments when the model picks among several functions."""
    return '{"name": ' + json.dumps(name) + ', "arguments": '


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class CallFormat:
    """How forced calls are written in a model's own tool-call format: each
    ``{"name": ..., "arguments": ...}`` object between ``before`` and ``after``, calls
    separated by ``separator`` (the format its tool-call parser reads back)."""

    before: str = ""
    after: str = ""
    separator: str = "\n"


@dataclass(frozen=True, slots=True)
class CompiledOutput:
    """A compiled grammar and what the stream needs to know about its text."""

    grammar: xgr.CompiledGrammar
    tool_names: tuple[str, ...] = ()  # a forced call: one name (text = arguments) or several
    # Calls written in the CallFormat it was compiled for (one, or up to
    # MAX_PARALLEL_CALLS when parallel), for a tool-call parser to read back.
    wrapped: bool = False


class GrammarBook:
    """The grammars of one tokenizer: compiled once per schema, shared by all requests."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Iterable[int],
                 max_string: int = DEFAULT_MAX_STRING) -> None:
        stops = sorted(eos_ids)
        base = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=stops or None)
        vocab = [bytes(b) for b in base.decoded_vocab] + [b""] * vocab_size
        vocab = vocab[:vocab_size]
        # Special tokens are skipped when decoding: never let the grammar take them for text.
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()
                    if getattr(t, "special", False)}
        for i in special:
            if 0 <= i < vocab_size:
                vocab[i] = b""
        self.info = xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=vocab_size,
                                      stop_token_ids=stops or None,
                                      add_prefix_space=base.add_prefix_space)
        self.vocab_size = vocab_size
        self.stop_ids = stops
        self.max_string = max_string
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self.utf8 = Utf8Guard(vocab, stops)
        self._cache: OrderedDict[str, CompiledOutput] = OrderedDict()
        self._lock = threading.Lock()
        self.counters = {"grammar_hits": 0, "grammar_misses": 0, "grammar_compile_us": 0}

    def compile(self, mode: JsonOutput | ForcedToolCall,
                calls: CallFormat | None = None) -> CompiledOutput:
        """The grammar for ``mode``, from the cache or compiled now; a 400 if the schema
        cannot be enforced. ``calls``: the format forced calls are written in (None: a
        single call's arguments alone, or ``{"name": ..., "arguments": ...}`` among
        several functions)."""
        if isinstance(mode, JsonOutput):
            key = _canonical(["json", mode.schema])
        else:
            key = _canonical(["call", [[f.name, f.parameters] for f in mode.functions],
                              None if calls is None else
                              [calls.before, calls.after, calls.separator, mode.parallel]])
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                self.counters["grammar_hits"] += 1
                return found
        started = time.perf_counter()
        compiled = self._compile(mode, calls)
        if not SequenceGrammar(self, compiled).can_start():  # e.g. a schema that is only a loop
            param = mode.param if isinstance(mode, JsonOutput) else "tools"
            raise InvalidRequestError(f"{param}: the schema admits no value that can be "
                                      "generated", param=param)
        with self._lock:
            self.counters["grammar_misses"] += 1
            self.counters["grammar_compile_us"] += int((time.perf_counter() - started) * 1e6)
            self._cache[key] = compiled
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, mode: JsonOutput | ForcedToolCall, calls: CallFormat | None
                 ) -> CompiledOutput:
        grammar = output_grammar(mode, calls, self.max_string)
        if isinstance(mode, JsonOutput):
            return CompiledOutput(self._compiler.compile_grammar(grammar))
        return CompiledOutput(self._compiler.compile_grammar(grammar),
                              tuple(f.name for f in mode.functions), wrapped=calls is not None)

    def start(self, compiled: CompiledOutput, prefix: str = "") -> SequenceGrammar:
        """A matcher for one sequence; ``prefix``: text already in the answer (a
        continued message), which must fit the grammar."""
        sequence = SequenceGrammar(self, compiled)
        if prefix and not sequence.accept_text(prefix):
            raise InvalidRequestError(
                "the final assistant message does not fit the requested format, so it "
                "cannot be continued under it", param="messages")
        return sequence


def output_grammar(mode: JsonOutput | ForcedToolCall, calls: CallFormat | None = None,
                   max_string: int = DEFAULT_MAX_STRING) -> xgr.Grammar:
    """The grammar of what ``mode`` asks for, before it is compiled for a tokenizer (an
    engine with its own grammar backend takes it as EBNF text, ``str(grammar)``); a 400
    if a schema cannot be enforced. ``calls`` as for :meth:`GrammarBook.compile`."""
    if isinstance(mode, JsonOutput):
        if mode.schema == {"type": "object"}:  # json_object: any object at all
            return xgr.Grammar.from_json_schema(
                '{"type": "object"}', any_whitespace=False, separators=_SEPARATORS,
                strict_mode=False)
        return _schema_grammar(mode.schema, mode.param, max_string)
    functions = mode.functions
    if calls is not None:
        most = MAX_PARALLEL_CALLS if mode.parallel else 1
        return _calls_grammar(functions, calls, most, max_string)
    if len(functions) == 1:
        return _schema_grammar(functions[0].parameters, functions[0].param, max_string)
    return xgr.Grammar.union(*(_call_grammar(f, max_string) for f in functions))


def _call_grammar(function: ToolFunction, max_string: int, before: str = "", after: str = ""
                  ) -> xgr.Grammar:
    prefix = json.dumps(before + tool_call_prefix(function.name))
    return xgr.Grammar.concat(
        xgr.Grammar.from_ebnf(f"root ::= {prefix}"),
        _schema_grammar(function.parameters, function.param, max_string),
        xgr.Grammar.from_ebnf(f"root ::= {json.dumps('}' + after)}"),
    )


def _calls_grammar(functions: tuple[ToolFunction, ...], calls: CallFormat, most: int,
                   max_string: int) -> xgr.Grammar:
    """One to ``most`` calls, each of any of ``functions``."""
    one = [_call_grammar(f, max_string, calls.before, calls.after) for f in functions]
    call = one[0] if len(one) == 1 else xgr.Grammar.union(*one)
    nothing = xgr.Grammar.from_ebnf('root ::= ""')
    separator = xgr.Grammar.from_ebnf(f"root ::= {json.dumps(calls.separator)}")
    grammar = call
    for _ in range(most - 1):
        grammar = xgr.Grammar.concat(call, xgr.Grammar.union(
            nothing, xgr.Grammar.concat(separator, grammar)))
    return grammar


def _schema_grammar(schema: Mapping[str, Any], param: str, max_string: int) -> xgr.Grammar:
    reason = unenforceable(schema)
    if reason is not None:
        raise InvalidRequestError(
            f"{param}: constrained decoding cannot enforce this schema: it uses {reason}",
            param=param)
    try:
        return xgr.Grammar.from_json_schema(
            json.dumps(_bounded(schema, max_string)), any_whitespace=False,
            separators=_SEPARATORS, strict_mode=True)
    except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's conversion errors
        reason = _XGRAMMAR_WHERE.sub("", str(exc)).strip()
        raise InvalidRequestError(
            f"{param}: constrained decoding cannot enforce this schema: {reason}",
            param=param) from exc


# The states of a UTF-8 decoder: (continuation bytes still needed, lowest and highest
# allowed value of the next byte). State 0 is "between characters".
_UTF8_STATES = ((0, 0x80, 0xBF), (1, 0x80, 0xBF), (2, 0xA0, 0xBF), (2, 0x80, 0xBF),
                (2, 0x80, 0x9F), (3, 0x90, 0xBF), (3, 0x80, 0xBF), (3, 0x80, 0x8F))
_UTF8_INDEX = {state: i for i, state in enumerate(_UTF8_STATES)}


def _utf8_step(state: int, byte: int) -> int:
    """The decoder's state after ``byte``; -1 if the text would not be valid UTF-8 (or
    would hold a raw control character, which JSON forbids)."""
    need, low, high = _UTF8_STATES[state]
    if need:
        return _UTF8_INDEX[(need - 1, 0x80, 0xBF)] if low <= byte <= high else -1
    if byte < 0x80:
        return 0 if byte >= 0x20 else -1
    if 0xC2 <= byte <= 0xDF:
        return 1
    if byte == 0xE0:
        return 2
    if byte == 0xED:
        return 4
    if 0xE1 <= byte <= 0xEF:
        return 3
    if byte == 0xF0:
        return 5
    if 0xF1 <= byte <= 0xF3:
        return 6
    return 7 if byte == 0xF4 else -1


class Utf8Guard:
    """Per UTF-8 decoder state, the tokens that keep the text valid, and where they lead."""

    def __init__(self, vocab: list[bytes], stops: Iterable[int]) -> None:
        states = len(_UTF8_STATES)
        stop_set = set(stops)
        self.next_state = [[-1] * len(vocab) for _ in range(states)]
        allowed = torch.zeros((states, len(vocab)), dtype=torch.bool)
        for token, spelling in enumerate(vocab):
            if token in stop_set:
                self.next_state[0][token] = 0
                allowed[0, token] = True
                continue
            if not spelling:
                continue
            if spelling.isascii():  # the common case: valid exactly between characters
                if all(b >= 0x20 for b in spelling):
                    self.next_state[0][token] = 0
                    allowed[0, token] = True
                continue
            for start in range(states):
                state = start
                for byte in spelling:
                    state = _utf8_step(state, byte)
                    if state < 0:
                        break
                if state >= 0:
                    self.next_state[start][token] = state
                    allowed[start, token] = True
        self.masks = torch.cat([_pack(row) for row in allowed])


def _pack(allowed: torch.Tensor) -> torch.Tensor:
    """A bool vector as xgrammar's bitmask: bit ``i % 32`` of int32 word ``i // 32``."""
    size = allowed.numel()
    padded = torch.zeros(((size + 31) // 32) * 32, dtype=torch.int64)
    padded[:size] = allowed.to(torch.int64)
    weights = torch.tensor([1 << b for b in range(32)], dtype=torch.int64)
    words = (padded.view(-1, 32) * weights).sum(dim=1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).unsqueeze(0)


class SequenceGrammar:
    """The grammar state of one sequence: masks logits, accepts the chosen token."""

    def __init__(self, book: GrammarBook, compiled: CompiledOutput) -> None:
        self._book = book
        self._matcher = xgr.GrammarMatcher(compiled.grammar,
                                           override_stop_tokens=book.stop_ids or None)
        self._bitmask = xgr.allocate_token_bitmask(1, book.vocab_size)
        self._utf8_state = 0

    def accept_text(self, text: str) -> bool:
        """Advance over text already in the answer (whole characters: UTF-8 state 0)."""
        return bool(self._matcher.accept_string(text))

    def can_start(self) -> bool:
        """Whether some token may come first (a schema can admit nothing at all)."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        self._bitmask &= self._book.utf8.masks[self._utf8_state]
        return bool(self._bitmask.any())

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of one row of logits with every token the grammar forbids at ``-inf``."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        self._bitmask &= self._book.utf8.masks[self._utf8_state]
        if not bool(self._bitmask.any()):
            raise EngineError("the output grammar admits no next token")
        masked = logits.float().clone().unsqueeze(0)
        bitmask = self._bitmask if masked.device.type == "cpu" else self._bitmask.to(masked.device)
        xgr.apply_token_bitmask_inplace(masked, bitmask, vocab_size=self._book.vocab_size)
        return masked[0]

    def accept(self, token_id: int) -> None:
        state = self._book.utf8.next_state[self._utf8_state][token_id]
        if state < 0 or not self._matcher.accept_token(token_id):
            raise EngineError(f"token {token_id} does not fit the output grammar")
        self._utf8_state = state

    def finished(self) -> bool:
        return bool(self._matcher.is_terminated())
