"""Untrusted JSON is parsed with limits; the interpreter's recursion limit stays sane."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from agoranet.api import jsonlimits
from agoranet.api.handlers import parse_json_object
from agoranet.errors import InvalidJSONError, InvalidRequestError
from agoranet.payments import x402wire

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_values_within_the_limits_parse_like_json() -> None:
    text = '{"a": [1, 2.5, "x", null, true], "b": {"c": -7}, "big": ' + "9" * 80 + "}"
    assert jsonlimits.loads(text) == {"a": [1, 2.5, "x", None, True], "b": {"c": -7},
                                      "big": int("9" * 80)}
    assert jsonlimits.loads(b"[" * 150 + b"]" * 150) is not None
    assert jsonlimits.loads_object(b'{"k": "\\u00e9"}') == {"k": "\u00e9"}
    assert jsonlimits.loads(b"\xef\xbb\xbf[1]") == [1]


@pytest.mark.parametrize(("raw", "words"), [
    (DEEP, "nested deeper than 200"),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested deeper"),
    (b"[" + b"9" * 5000 + b"]", "too large"),
    (b'{"max_tokens": ' + b"9" * 4000 + b"}", "more than 80 digits"),
    (b'[{"x": [-' + b"1" * 81 + b"]}]", "more than 80 digits"),
    (b"\xff\xfe", "not valid JSON"),
    (b'{"a": 1', "not valid JSON"),
    (b"[1] [2]", "not valid JSON"),
])
def test_limits_are_clear_errors(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidJSONError, match=words) as info:
        jsonlimits.loads(raw, what="the body")
    assert isinstance(info.value, ValueError)  # callers refusing bad values catch it too
    assert str(info.value).startswith("the body")


def test_digits_inside_strings_are_text() -> None:
    assert jsonlimits.loads('{"prompt": "' + "7" * 500 + '"}') == {"prompt": "7" * 500}


def test_size_limit_comes_before_parsing() -> None:
    with pytest.raises(InvalidJSONError, match="larger than the limit of 10 bytes") as info:
        jsonlimits.loads(b'{"a": "0123456789"}', max_bytes=10)
    assert info.value.too_large
    with pytest.raises(InvalidJSONError, match="must be a JSON object"):
        jsonlimits.loads_object(b"[1]")


def test_bodies_and_payment_headers_use_the_limits() -> None:
    with pytest.raises(InvalidRequestError, match="nested deeper"):
        parse_json_object(DEEP)
    with pytest.raises(ValueError, match="nested deeper"):
        x402wire.decode_json(base64.b64encode(b"[" * 300 + b"]" * 300).decode(),
                             "PAYMENT-SIGNATURE")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_importing_web3_through_agoranet_keeps_the_recursion_limit() -> None:
    """py_ecc (under web3 and eth_account) raises the limit to 100,000 on import; with it,
    C code recursing on a deep value overflows the stack and kills the process."""
    done = run_python(
        "import sys; before = sys.getrecursionlimit()\n"
        "import agoranet.payments.accept.verifier, agoranet.payments.x402wire, web3, eth_account\n"
        "import py_ecc\n"
        "print(before, sys.getrecursionlimit())")
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert after == before < 10_000


def test_deep_json_is_an_error_even_under_a_raised_recursion_limit() -> None:
    """The parser's depth limit does not depend on the interpreter's recursion limit."""
    done = run_python(
        "import sys\n"
        "from agoranet.api import jsonlimits\n"
        "sys.setrecursionlimit(100_000)\n"
        "try:\n"
        "    jsonlimits.loads(b'[' * 100_000 + b']' * 100_000)\n"
        "except ValueError as exc:\n"
        "    print('refused:', exc)\n")
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert "nested deeper" in done.stdout


def test_a_training_file_line_of_deep_json_is_a_data_error() -> None:
    """Training files are uploaded by buyers: each line is untrusted JSON too."""
    from agoranet.errors import TuningDataError
    from agoranet.tuning.data import parse_jsonl

    good = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    with pytest.raises(TuningDataError, match="line 2: invalid JSON \\(nested deeper"):
        parse_jsonl(good + "\n" + "[" * 100_000 + "]" * 100_000)


def test_tool_call_arguments_of_deep_json_reach_the_template_as_sent() -> None:
    """A chat's earlier tool call carries its arguments as a JSON string from the client."""
    from agoranet.engines.base import Message
    from agoranet.engines.prompt import _template_message

    deep = "[" * 100_000 + "]" * 100_000
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}
    out = _template_message(Message("assistant", "", tool_calls=(call,)))
    assert out["tool_calls"][0]["function"]["arguments"] == deep
    call["function"]["arguments"] = '{"x": [1, 2]}'
    out = _template_message(Message("assistant", "", tool_calls=(call,)))
    assert out["tool_calls"][0]["function"]["arguments"] == {"x": [1, 2]}
