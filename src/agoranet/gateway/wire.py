"""What one OpenAI endpoint relayed by the gateway needs beyond chat completions.

:func:`agoranet.gateway.relay.relay` streams chat completions by default. Another endpoint
(the text completions of :mod:`agoranet.gateway.completions_wire`) passes a :class:`Wire`:
where the nodes serve it, how the next node continues an answer broken off, and how one of
its stream events reads as a chat chunk (so the relay's checks, deadlines, payment and
accounting stay one and the same).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Wire"]


class Wire(Protocol):
    """An endpoint's differences from chat completions, for the relay."""

    @property
    def path(self) -> str:
        """The node's route under its ``/v1`` URL, e.g. ``/completions``."""
        ...

    def continuation(self, body: dict[str, Any], produced: str,
                     tokens_done: int) -> dict[str, Any]:
        """The request for the next node: ``body`` continued after ``produced`` (the text
        already streamed, ``tokens_done`` tokens), with what is left of its token limit."""
        ...

    def as_chat_chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """One stream event of the node in a chat chunk's shape (anything it cannot read
        left as it is: the relay's checks then fail the node)."""
        ...
