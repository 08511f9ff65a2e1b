"""Relay tests' shorthand: a :class:`~agoranet.gateway.relay.Relay` whose result is one the
test made first (with its own request id and key) and reads after."""

from __future__ import annotations

from typing import Any

from agoranet.gateway.relay import Relay, RelayResult

__all__ = ["relay_into"]


def relay_into(result: RelayResult, *args: Any, **kwargs: Any) -> Relay:
    """``Relay(*args, **kwargs)`` for ``result``'s request, filling ``result``."""
    relay = Relay(*args, request_id=result.request_id, **kwargs)
    relay.result = result
    return relay
