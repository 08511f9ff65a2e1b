"""Hypothesis strategies for what clients send a node or a gateway, and what nodes answer.

Valid-ish inputs are valid requests mutated a little (one field dropped, retyped,
made huge or deep), so most of them reach the deeper checks instead of failing
at the first one; broken ones are raw bytes a JSON parser must survive.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "NodeScenario",
    "chat_bodies",
    "completion_bodies",
    "json_values",
    "mutated",
    "node_scenarios",
    "payment_headers",
    "query_strings",
    "raw_bodies",
]

HUGE_INTS = st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, 2**64, 2**256, -(2**63),
                             10**100, int("9" * 400)])
TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", "\x00", "\ud7ff", "\U0001f600" * 8, "a" * 3000, "<|im_start|>", "\r\n", "%s%n"])
SCALARS = (st.none() | st.booleans() | st.integers() | HUGE_INTS
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars, huge ints, odd text, nested lists and objects."""
    return st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
        max_leaves=max_leaves)


def _deep(depth: int, leaf: Any = 1) -> Any:
    value: Any = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


# deeper still comes as raw bytes (raw_bodies): json.dumps cannot write it
DEEP = st.sampled_from([10, 100, 400, 800]).map(_deep)
ODD_VALUES = json_values() | DEEP | HUGE_INTS


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with up to three changes: a field dropped, replaced, added, or nested."""
    body = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["drop", "set", "add", "nested"]))
        keys = sorted(body)
        if action == "drop" and keys:
            body.pop(draw(st.sampled_from(keys)))
        elif action == "set" and keys:
            body[draw(st.sampled_from(keys))] = draw(ODD_VALUES)
        elif action == "add":
            name = draw(st.sampled_from(["agoranet", "stream_options", "logprobs",
                                         "top_logprobs", "n", "stop", "seed", "tools",
                                         "response_format", "max_completion_tokens",
                                         "continue_final_message", "add_generation_prompt",
                                         "echo", "ignore_eos", "user"]) | TEXT)
            body[name] = draw(ODD_VALUES)
        elif action == "nested" and isinstance(body.get("messages"), list) and body["messages"]:
            message = body["messages"][0]
            if isinstance(message, dict):
                message[draw(st.sampled_from(["role", "content", "name", "tool_calls"]))] = \
                    draw(ODD_VALUES | st.lists(st.fixed_dictionaries(
                        {"type": st.sampled_from(["text", "image_url", ""]), "text": SCALARS}),
                        max_size=3))
    return body


def _messages() -> st.SearchStrategy[list[dict[str, Any]]]:
    message = st.fixed_dictionaries({
        "role": st.sampled_from(["user", "system", "assistant", "developer"]),
        "content": st.text(st.characters(codec="utf-8"), max_size=60)})
    return st.lists(message, min_size=1, max_size=3).map(
        lambda ms: [*ms[:-1], {**ms[-1], "role": "user"}])


SCHEMA_LEAVES = st.sampled_from([
    {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"},
    {"type": "null"}, {}, {"enum": ["a", 1, None]}, {"const": "x"},
    {"type": "string", "maxLength": 3}, {"type": "string", "minLength": 100_000},
    {"type": "string", "pattern": "^[a-z]+$"}, {"type": "string", "pattern": "(a+)+$"},
    {"type": "string", "pattern": "["}, {"type": "string", "format": "date-time"},
    {"type": "integer", "minimum": 10**20}, {"type": "integer", "minimum": 5, "maximum": 1},
    {"type": ["string", "null"]}, {"$ref": "#/$defs/missing"}, {"$ref": "#"},
    {"type": "array", "minItems": 10**6}, {"not": {}}])


def json_schemas() -> st.SearchStrategy[dict[str, Any]]:
    """JSON schemas as tools' ``parameters`` and ``response_format`` carry them: plausible
    ones, and ones no output satisfies, with odd patterns, bounds and references."""
    return st.recursive(SCHEMA_LEAVES, lambda inner: st.one_of(
        st.dictionaries(st.sampled_from(["a", "b", "c d", ""]), inner, max_size=3).map(
            lambda props: {"type": "object", "properties": props, "required": sorted(props),
                           "additionalProperties": False}),
        inner.map(lambda item: {"type": "array", "items": item, "maxItems": 3}),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"anyOf": xs})),
        max_leaves=6)


def _structured() -> st.SearchStrategy[dict[str, Any]]:
    """``response_format`` or ``tools`` (with ``tool_choice``) for a chat request."""
    tool = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": st.sampled_from(["f", "get_weather", "a-b_1"]), "parameters": json_schemas()},
        optional={"description": TEXT, "strict": st.booleans()})})
    return st.one_of(
        st.fixed_dictionaries({"response_format": st.one_of(
            st.just({"type": "json_object"}), st.just({"type": "text"}),
            st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema":
                                   st.fixed_dictionaries({"name": st.just("answer"),
                                                          "schema": json_schemas()},
                                                         optional={"strict": st.booleans()})}))}),
        st.fixed_dictionaries({"tools": st.lists(tool, min_size=1, max_size=2)},
                              optional={"tool_choice": st.sampled_from(
                                  ["auto", "none", "required",
                                   {"type": "function", "function": {"name": "f"}}])}))


def chat_bodies(model: str = "tiny", *, max_tokens: int = 4) -> st.SearchStrategy[Any]:
    """Chat requests: mostly valid and cheap (``max_tokens`` at most ``max_tokens``), some
    with tools or a response format, then mutated, plus any JSON value at all."""
    plain = st.fixed_dictionaries(
        {"model": st.just(model), "messages": _messages(),
         "max_tokens": st.integers(1, max_tokens)},
        optional={"temperature": st.floats(0, 2), "stream": st.booleans(),
                  "seed": st.integers(0, 2**32), "stop": st.sampled_from(["\n", ["."]]),
                  "top_p": st.floats(0.1, 1), "logprobs": st.booleans()})
    valid = plain | st.tuples(plain, _structured()).map(lambda pair: {**pair[0], **pair[1]})
    return valid | valid.flatmap(mutated) | valid.flatmap(mutated) | json_values()


def completion_bodies(model: str = "tiny", *, max_tokens: int = 4) -> st.SearchStrategy[Any]:
    valid = st.fixed_dictionaries(
        {"model": st.just(model), "prompt": st.text(st.characters(codec="utf-8"), max_size=60),
         "max_tokens": st.integers(1, max_tokens)},
        optional={"temperature": st.floats(0, 2), "stream": st.booleans(),
                  "logprobs": st.integers(0, 5), "echo": st.booleans()})
    return valid | valid.flatmap(mutated) | json_values()


def raw_bodies() -> st.SearchStrategy[bytes]:
    """Bodies that are not a JSON object: broken JSON, bad UTF-8, deep nesting, huge numbers."""
    return st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"", b"{", b"[]", b"null", b"NaN", b'{"model": NaN}',
                         b'{"model": Infinity}', b"\xff\xfe{}", b'{"a":1}garbage',
                         b'{"model":"tiny","messages":[{"role":"user","content":"\xc3"}]}',
                         b"[" * 100_000, b'{"a":' * 50_000, b"1" * 5_000,
                         b'{"model":"tiny","max_tokens":' + b"9" * 4_500 + b"}",
                         b'{"model":"tiny","messages":[],"max_tokens":1e999}',
                         b'{"\\ud800":"\\udfff"}']),
        json_values().map(lambda v: json.dumps(v).encode()),
    )


# ---------------------------------------------------------------- x402 payment headers


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += _paths(inner, (*prefix, i))
    return found


def _set(value: Any, path: tuple[Any, ...], new: Any) -> None:
    for step in path[:-1]:
        value = value[step]
    value[path[-1]] = new


def _drop(value: Any, path: tuple[Any, ...]) -> None:
    for step in path[:-1]:
        value = value[step]
    if isinstance(value, dict):
        value.pop(path[-1], None)


ADDRESSY = st.sampled_from(["0x" + "00" * 20, "0x" + "ff" * 20, "0x" + "00" * 32, "0x",
                            "0x" + "1" * 130, "eip155:1", "eip155:99999999999999999999",
                            "batch-settlement", "exact", "deposit", "voucher", "-1", "1e5",
                            str(2**63), str(2**256), "9" * 5000])


@st.composite
def payment_headers(draw: st.DrawFn, valid_header: str) -> str | bytes:
    """``PAYMENT-SIGNATURE`` values mutated from a valid one (base64 JSON of a voucher
    payload the real payer signed): fields changed, dropped, retyped, the kind switched to
    ``deposit`` or ``exact`` with junk, or the encoding itself broken."""
    payload = json.loads(base64.b64decode(valid_header))
    how = draw(st.sampled_from(["fields", "fields", "fields", "kind", "encoding", "raw"]))
    if how == "raw":
        return draw(st.sampled_from([b"", b"\xff\xfe", b"\x00", "\u00e9".encode("latin-1"),
                                     b"a" * 70_000, b"=" * 8, b"e30=", b"bnVsbA==", b"W10="])
                    | st.binary(max_size=100).filter(lambda b: b"\n" not in b and b"\r" not in b))
    if how == "kind":
        kind = draw(st.sampled_from(["deposit", "exact", "claim", "", None]))
        if kind == "exact":
            payload["accepted"]["scheme"] = "exact"
            payload["payload"] = draw(st.fixed_dictionaries({
                "signature": ADDRESSY | SCALARS,
                "authorization": st.fixed_dictionaries({
                    "from": ADDRESSY, "to": ADDRESSY, "value": ADDRESSY | SCALARS,
                    "validAfter": ADDRESSY | SCALARS, "validBefore": ADDRESSY | SCALARS,
                    "nonce": ADDRESSY | SCALARS}) | ODD_VALUES}))
        else:
            payload["payload"]["type"] = kind
            if kind == "deposit":
                payload["payload"]["deposit"] = draw(ODD_VALUES | st.fixed_dictionaries({
                    "amount": ADDRESSY | SCALARS,
                    "authorization": json_values() | st.fixed_dictionaries({
                        "erc3009Authorization": st.fixed_dictionaries({
                            "validAfter": ADDRESSY | SCALARS, "validBefore": ADDRESSY,
                            "salt": ADDRESSY, "signature": ADDRESSY})})}))
    elif how in ("fields", "encoding"):
        paths = _paths(payload)
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(paths))
            if draw(st.booleans()):
                _set(payload, path, draw(ODD_VALUES | ADDRESSY))
            else:
                _drop(payload, path)
            paths = _paths(payload) or [("x",)]
    raw = json.dumps(payload).encode()
    if how == "encoding":
        trick = draw(st.sampled_from(["urlsafe", "no-padding", "spaces", "double", "truncate",
                                      "json", "latin"]))
        if trick == "urlsafe":
            return base64.urlsafe_b64encode(raw).decode()
        if trick == "no-padding":
            return base64.b64encode(raw).decode().rstrip("=")
        if trick == "spaces":
            return " " + base64.b64encode(raw).decode() + " \t"
        if trick == "double":
            return base64.b64encode(base64.b64encode(raw)).decode()
        if trick == "truncate":
            encoded = base64.b64encode(raw).decode()  # its length varies with the voucher:
            return encoded[: len(encoded) * draw(st.integers(0, 99)) // 100]  # not a bound
        if trick == "latin":
            return base64.b64encode(raw) + "\u00ff".encode("latin-1")
        return raw.decode()
    return base64.b64encode(raw).decode()


# ---------------------------------------------------------------- query strings


def query_strings() -> st.SearchStrategy[str]:
    """Raw query strings: odd names and values, bad percent-escapes, repeats, huge ones."""
    part = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"),
                                 exclude_characters="#&="), max_size=20)
    pairs = st.lists(st.tuples(part | st.sampled_from(["id", "model", "limit", "after",
                                                       "stream", "x402"]), part),
                     max_size=5).map(lambda ps: "&".join(f"{k}={v}" for k, v in ps))
    return pairs | st.sampled_from(["%", "%zz", "%00", "%ff%fe", "a=%E2%82", "=&=&", "&&&",
                                    "a" * 9_000, "id=" + "9" * 5_000, "id[]=1&id[]=2",
                                    "stream=true", "model[$ne]=1"])


# ---------------------------------------------------------------- node answers


@dataclass
class NodeScenario:
    """What the fake node answers the gateway's next chat request with."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str | None = "text/event-stream"


def _chunk(content: Any = "hi", finish: Any = None, **extra: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "tiny",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
            **extra}


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
GOOD_STREAM = [_chunk("hello "), _chunk("world", "stop"), {**_chunk(None), "choices": [],
                                                            "usage": USAGE}]


def _sse(events: list[Any]) -> bytes:
    out = b""
    for event in events:
        out += event if isinstance(event, bytes) else \
            b"data: " + json.dumps(event).encode() + b"\n\n"
    return out


def good_scenario() -> NodeScenario:
    return NodeScenario(body=_sse([*GOOD_STREAM, b"data: [DONE]\n\n"]))


def _text_chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "text_completion", "created": 0, "model": "tiny",
            "choices": [{"index": 0, "text": text, "finish_reason": finish}]}


GOOD_TEXT_STREAM = [_text_chunk("hello "), _text_chunk("world", "stop"),
                    {**_text_chunk(None), "choices": [], "usage": USAGE}]


def good_completion_scenario() -> NodeScenario:
    """A well-formed streamed legacy completion (``/v1/completions``)."""
    return NodeScenario(body=_sse([*GOOD_TEXT_STREAM, b"data: [DONE]\n\n"]))


@st.composite
def _bad_event(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["value", "chunk", "field", "bytes", "error"]))
    if kind == "value":
        return draw(ODD_VALUES)
    if kind == "chunk":
        return _chunk(draw(ODD_VALUES), draw(ODD_VALUES | st.sampled_from(["stop", "length"])))
    if kind == "field":
        event = _chunk()
        event[draw(st.sampled_from(["choices", "usage", "agoranet", "error", "object"]))] = \
            draw(ODD_VALUES | st.lists(ODD_VALUES, max_size=2))
        if draw(st.booleans()) and isinstance(event.get("choices"), list):
            event["choices"] = [draw(ODD_VALUES)]
        return event
    if kind == "error":
        return {"error": draw(ODD_VALUES | st.fixed_dictionaries({"message": ODD_VALUES}))}
    return draw(st.sampled_from([b"data: {\n\n", b"data:\n\n", b"data: [DONE\n\n",
                                 b"data: \xff\xfe\n\n", b": comment\n\n", b"event: x\n\n",
                                 b"data: " + b"[" * 20_000 + b"\n\n",
                                 b"data: " + b"9" * 5_000 + b"\n\n",
                                 b"data: {\"choices\": [{\"delta\": {\"content\": \"x\"}}]}",
                                 b"\x00\x01\x02", b"data: " + b"a" * 70_000 + b"\n\n"]))


@st.composite
def _receipt_event(draw: st.DrawFn) -> Any:
    """A receipt event of a paid stream, with garbage where the payment response goes."""
    response = draw(ODD_VALUES | st.fixed_dictionaries({
        "success": st.booleans(), "extra": ODD_VALUES | st.fixed_dictionaries({
            "chargedAmount": ADDRESSY | SCALARS, "receipt": ODD_VALUES})}))
    event = {"id": "receipt-x", "created": 0, "model": "tiny", "choices": [],
             "object": draw(st.sampled_from(["agoranet.receipt", "agoranet.receipt.running"]))}
    if draw(st.integers(0, 3)):
        event["x402_payment_response"] = response
    return event


@st.composite
def _mutated_header(draw: st.DrawFn, template: dict[str, Any]) -> str:
    """``template`` (a decoded x402 header) with fields changed or dropped, in base64."""
    payload = json.loads(json.dumps(template))
    paths = _paths(payload) or [("x",)]
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(paths))
        if draw(st.booleans()):
            _set(payload, path, draw(ODD_VALUES | ADDRESSY))
        else:
            _drop(payload, path)
        paths = _paths(payload) or [("x",)]
    if draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from(["", "%%%", "e30=", "W10=", "bnVsbA==", "a" * 100]))
    return base64.b64encode(json.dumps(payload).encode()).decode()


@st.composite
def node_scenarios(draw: st.DrawFn, required: dict[str, Any] | None = None) -> NodeScenario:
    """A node's answer: a good stream with garbage spliced in, an error status with an odd
    body, odd content types and headers. With ``required`` (a decoded x402
    ``PAYMENT-REQUIRED`` of a real node), also the garbage a paid node can send its payer:
    a 402 with requirements mutated from it, receipt events and payment responses."""
    shapes = ["stream", "stream", "stream", "error", "json", "empty"]
    if required is not None:
        shapes += ["402", "402", "receipt", "receipt"]
    shape = draw(st.sampled_from(shapes))
    if shape == "402":
        assert required is not None
        return NodeScenario(402, {"PAYMENT-REQUIRED": draw(_mutated_header(required))},
                            b'{"error": {"message": "pay", "type": "payment_required"}}',
                            "application/json")
    if shape == "receipt":
        events = [*GOOD_STREAM[:2], draw(_receipt_event()), GOOD_STREAM[2]]
        if draw(st.booleans()):
            events.insert(1, draw(_receipt_event()))
        return NodeScenario(200, {}, _sse([*events, b"data: [DONE]\n\n"]))
    headers: dict[str, str] = {}
    if draw(st.integers(0, 4)) == 0:
        name = draw(st.sampled_from(["PAYMENT-RESPONSE", "PAYMENT-REQUIRED", "Content-Length",
                                     "Retry-After", "Content-Encoding", "Transfer-Encoding"]))
        headers[name] = draw(st.sampled_from(["", "0", "-1", "gzip", "chunked", "e30=", "W10=",
                                              "%%%", "9" * 100]))
    if shape == "stream":
        events: list[Any] = list(GOOD_STREAM)
        for _ in range(draw(st.integers(1, 3))):
            events.insert(draw(st.integers(0, len(events))), draw(_bad_event()))
        if draw(st.booleans()):
            events = events[: draw(st.integers(0, len(events)))]
        if draw(st.booleans()):
            events.append(b"data: [DONE]\n\n")
        content_type = draw(st.sampled_from(["text/event-stream", "application/json",
                                             "text/plain", None]))
        return NodeScenario(200, headers, _sse(events), content_type)
    if shape == "error":
        status = draw(st.sampled_from([400, 401, 402, 403, 404, 409, 413, 422, 429, 500, 502,
                                       503, 504]) | st.integers(201, 599))
        body = draw(st.sampled_from([b"", b"not json", b"{}", b'{"error": null}',
                                     b'{"error": "x"}', b'{"error": {"message": 5}}',
                                     b'{"error": {"message": null}}', b"[1]", b"\xff\xfe"])
                    | json_values().map(lambda v: json.dumps(v).encode()))
        return NodeScenario(status, headers, body, draw(st.sampled_from(
            ["application/json", "text/html", None])))
    if shape == "json":
        body = json.dumps(draw(json_values() | st.just({"choices": [
            {"message": {"content": "x"}}]}))).encode()
        if required is not None and draw(st.booleans()):
            headers["PAYMENT-RESPONSE"] = draw(st.sampled_from(["", "%%%", "e30=", "W10="]) |
                                               _mutated_header({"success": True, "extra": {
                                                   "chargedAmount": "1", "receipt": {}}}))
        return NodeScenario(200, headers, body, "application/json")
    return NodeScenario(draw(st.sampled_from([200, 204, 205, 304])), headers, b"",
                        draw(st.sampled_from(["text/event-stream", None])))
