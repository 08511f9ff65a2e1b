"""Limits on a tool call's arguments, checked before its schema and before any payment.

A body over ``max_bytes`` is a 413; arguments nested deeper than ``max_depth`` or that
are not a JSON object are a 400. Over MCP the transport has parsed the JSON already:
the same limits apply to the re-encoded arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from agoranet.api import jsonlimits
from agoranet.errors import InvalidJSONError, InvalidRequestError, PayloadTooLargeError

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_DEPTH", "ArgumentLimits"]

DEFAULT_MAX_BYTES: Final = 1024 * 1024
DEFAULT_MAX_DEPTH: Final = 32


@dataclass(frozen=True)
class ArgumentLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH

    def parse(self, body: bytes) -> dict[str, Any]:
        """The arguments in an HTTP body (``{}`` for an empty one), within the limits."""
        if not body.strip():
            return {}
        try:
            arguments = jsonlimits.loads_object(body, what="the tool's arguments",
                                                max_bytes=self.max_bytes)
        except InvalidJSONError as exc:
            if exc.too_large:
                raise PayloadTooLargeError(str(exc)) from None
            raise InvalidRequestError(str(exc)) from None
        self._check_depth(arguments)
        return arguments

    def check(self, arguments: Any) -> dict[str, Any]:
        """Arguments already parsed (MCP), held to the same limits."""
        if arguments is None:
            return {}
        if not isinstance(arguments, dict):
            raise InvalidRequestError("the tool's arguments must be a JSON object")
        self._check_depth(arguments)
        size = len(json.dumps(arguments, separators=(",", ":")).encode())
        if size > self.max_bytes:
            raise PayloadTooLargeError(f"the tool's arguments are larger than the limit of "
                                       f"{self.max_bytes} bytes")
        return arguments

    def _check_depth(self, value: Any) -> None:
        stack: list[tuple[Any, int]] = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if depth > self.max_depth:
                raise InvalidRequestError(f"the tool's arguments are nested deeper than "
                                          f"{self.max_depth} levels")
            if isinstance(item, dict):
                stack.extend((v, depth + 1) for v in item.values())
            elif isinstance(item, list):
                stack.extend((v, depth + 1) for v in item)
