"""A buyer's request id: its name for one paid call, which the call's receipt carries.

A buyer sends it in the ``x-request-id`` header (to a node's paid routes, to a tool
server); without one the seller names the call itself. A request id is 1 to
:data:`MAX_REQUEST_ID` characters of letters, digits and ``._:-``; any other is a 400
before any payment is looked at (nothing is held or charged). This is the one check, used
by the node and the tool server alike.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from agoranet.errors import InvalidRequestError

__all__ = ["MAX_REQUEST_ID", "REQUEST_ID_HEADER", "request_id"]

REQUEST_ID_HEADER: Final = "x-request-id"
MAX_REQUEST_ID: Final = 200
_ALLOWED: Final = re.compile(r"[A-Za-z0-9._:\-]+")


def request_id(sent: object | None) -> str:
    """The call's request id: the buyer's ``sent`` one checked, or a fresh one if None."""
    if sent is None:
        return uuid.uuid4().hex
    if not isinstance(sent, str):
        raise InvalidRequestError(f"the request id must be a string, not "
                                  f"{type(sent).__name__}", param="request_id")
    if not sent or len(sent) > MAX_REQUEST_ID or not _ALLOWED.fullmatch(sent):
        raise InvalidRequestError(
            f"the request id {sent[:80]!r} must be 1 to {MAX_REQUEST_ID} letters, digits "
            "or '._:-'", param="request_id")
    return sent
