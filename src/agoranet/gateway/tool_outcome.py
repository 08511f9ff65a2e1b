"""What one seller made of one tool call (:class:`CallOutcome`), read from its answer.

Shared by the gateway's ways of paying a seller (:mod:`.tool_buying`'s batch-settlement
channel, :mod:`.tool_exact`'s one transfer per call): a result is JSON within
:data:`MAX_RESULT_BYTES`; a 400 is the buyer's mistake (its arguments), held against no
one; any other failure is the seller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import httpx

from agoranet.api import jsonlimits
from agoranet.errors import AgoranetError, InvalidRequestError

__all__ = ["MAX_RESULT_BYTES", "CallOutcome", "error_text", "result_of", "unpaid_outcome"]

MAX_RESULT_BYTES: Final = 4 * 1024 * 1024


@dataclass
class CallOutcome:
    """What one seller made of a call: its result (None: it failed before one), what it
    was paid (base units) and the receipt behind it, and why it failed."""

    result: Any = None
    answered: bool = False
    amount: int = 0
    receipt: str | None = None
    error: str | None = None
    charged_failure: bool = False  # took payment and failed
    blameless: bool = False  # the gateway could not pay it: no fault of the seller's
    buyer_error: AgoranetError | None = None  # the arguments were wrong: no one's fault


def result_of(response: httpx.Response) -> tuple[bool, Any]:
    """Whether the answer is JSON (within the limits), and its value."""
    try:
        return True, jsonlimits.loads(response.content, what="the tool's answer",
                                      max_bytes=MAX_RESULT_BYTES)
    except ValueError:
        return False, None


def error_text(response: httpx.Response) -> str:
    try:
        body = jsonlimits.loads(response.content, what="the error")
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return f"{response.status_code}: {str(message)[:300]}"


def unpaid_outcome(response: httpx.Response) -> CallOutcome:
    """A call that carried no payment: its result, or why it failed."""
    if response.status_code == 400:
        return CallOutcome(buyer_error=InvalidRequestError(
            f"the tool refused the arguments: {error_text(response)}", param="arguments"))
    if response.status_code != 200:
        return CallOutcome(error=error_text(response))
    ok, result = result_of(response)
    return CallOutcome(result=result, answered=True) if ok else \
        CallOutcome(error="its answer is not JSON")
