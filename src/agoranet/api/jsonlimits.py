"""Parsing untrusted JSON with limits: size, nesting depth and number size.

Every JSON that comes from outside the process (request bodies, payment headers,
a node's answers, SSE lines and error bodies, offers, policy files) goes through
:func:`loads`. It parses with pydantic-core's parser (jiter), whose nesting limit
is fixed and independent of the interpreter's recursion limit, so a body of
100,000 nested arrays is a clear error instead of a stack overflow; it refuses
input over ``max_bytes`` before parsing, and integers of more than
:data:`MAX_INT_DIGITS` digits (nothing agoranet reads is larger than a uint256),
so no later ``float()`` or database write meets a 4,000-digit number.
"""

from __future__ import annotations

from typing import Any, Final

import httpx
from pydantic_core import from_json

from agoranet.errors import InvalidJSONError

__all__ = ["DEFAULT_MAX_BYTES", "MAX_DEPTH", "MAX_INT_DIGITS", "loads", "loads_object",
           "read_limited"]

DEFAULT_MAX_BYTES: Final = 8 * 1024 * 1024
MAX_DEPTH: Final = 200  # jiter's fixed nesting limit
MAX_INT_DIGITS: Final = 80  # a uint256 has 78
# Each digit read as "1" and every other byte as "0": a run of more than MAX_INT_DIGITS
# digits is then a substring search (a regular expression for it tried each position,
# ~20 ns a byte: a payment header's parse spent more on it than on the JSON).
_DIGITS_AS_ONES: Final = bytes(0x31 if 0x30 <= b <= 0x39 else 0x30 for b in range(256))
_LONG_RUN: Final = b"1" * (MAX_INT_DIGITS + 1)
_INT_BOUND: Final = 10**MAX_INT_DIGITS


def loads(data: str | bytes | bytearray, *, what: str = "the input",
          max_bytes: int | None = DEFAULT_MAX_BYTES) -> Any:
    """The value of one JSON document from an untrusted source.

    Raises :class:`~agoranet.errors.InvalidJSONError` (also a ``ValueError``) naming
    ``what`` when the input is over ``max_bytes`` (``too_large`` is then set), is not
    UTF-8 JSON, is nested deeper than :data:`MAX_DEPTH` or holds an integer of more
    than :data:`MAX_INT_DIGITS` digits.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark, as json.loads takes
    if max_bytes is not None and len(raw) > max_bytes:
        raise _error(what, f"is larger than the limit of {max_bytes} bytes", too_large=True)
    try:
        value = from_json(raw)
    except ValueError as exc:
        reason = str(exc)
        if reason.startswith("recursion limit exceeded"):
            reason = f"nested deeper than {MAX_DEPTH} levels ({reason})"
        elif reason.startswith("number out of range"):
            reason = f"a number is too large ({reason})"
        raise _error(what, f"is not valid JSON: {reason}") from None
    if _LONG_RUN in raw.translate(_DIGITS_AS_ONES) and _has_huge_int(value):
        raise _error(what, f"holds an integer of more than {MAX_INT_DIGITS} digits")
    return value


def loads_object(data: str | bytes | bytearray, *, what: str = "the input",
                 max_bytes: int | None = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Like :func:`loads`, and the document must be a JSON object."""
    value = loads(data, what=what, max_bytes=max_bytes)
    if not isinstance(value, dict):
        raise _error(what, "must be a JSON object")
    return value


async def read_limited(response: httpx.Response, max_bytes: int, *,
                       what: str = "the response") -> bytes:
    """The body of a streamed ``response``, refused (InvalidJSONError, ``too_large``) as
    soon as it passes ``max_bytes``: a peer cannot make us buffer more."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise _error(what, f"is larger than the limit of {max_bytes} bytes", too_large=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _error(what: str, problem: str, *, too_large: bool = False) -> InvalidJSONError:
    return InvalidJSONError(f"{what} {problem}", too_large=too_large, problem=problem)


def _has_huge_int(value: Any) -> bool:
    """Whether an integer of more than MAX_INT_DIGITS digits is anywhere in ``value``
    (iterative: the value is at most MAX_DEPTH deep, but no recursion is needed)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and \
                not -_INT_BOUND < item < _INT_BOUND:
            return True
    return False
