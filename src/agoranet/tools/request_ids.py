"""The buyer's name for a paid tool call: its request id, which the call's receipt carries.

Over HTTP a buyer sends it in the ``x-request-id`` header (as to a node); over MCP, where
one session carries many calls, in the call's ``_meta["agoranet/request-id"]``. Without
one the tool server names the call itself. A request id is at most
:data:`MAX_REQUEST_ID` characters of letters, digits and ``._:-``; any other is a 400
before any payment is looked at (nothing is charged). A request id that a running call
uses is refused too (:class:`~agoranet.tools.payments.ToolPayments`): one call, one receipt.
The check itself is the one the node uses too (:mod:`agoranet.request_ids`).
"""

from __future__ import annotations

from typing import Final

from agoranet.request_ids import MAX_REQUEST_ID, REQUEST_ID_HEADER, request_id

__all__ = ["MAX_REQUEST_ID", "REQUEST_ID_HEADER", "REQUEST_ID_META", "request_id"]

REQUEST_ID_META: Final = "agoranet/request-id"
