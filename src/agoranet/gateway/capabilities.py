"""What a chat request needs of a node beyond plain text, and whether its answer is
constrained (a tool call or JSON) and so must reach the client whole.

See :mod:`agoranet.engines.capabilities` for the names a node's offer lists.
"""

from __future__ import annotations

from dataclasses import dataclass

from agoranet.api.types import ChatCompletionRequest
from agoranet.engines import capabilities

__all__ = ["Needs", "needs_of"]


@dataclass(frozen=True, slots=True)
class Needs:
    """The capabilities a request needs, and where in the request each comes from."""

    capabilities: frozenset[str]
    params: dict[str, str]  # capability -> the request field that needs it
    constrained: bool  # the answer is a tool call or JSON: never continued by another node

    def param(self, capability: str) -> str | None:
        return self.params.get(capability)


def needs_of(request: ChatCompletionRequest) -> Needs:
    """What ``request`` needs: ``tools`` for tools (or tool calls and results in its
    messages), also ``tool_choice_auto`` when the model is to decide (``auto``, the default
    with tools), ``structured_output`` for a JSON ``response_format``, ``logprobs`` for
    ``logprobs``."""
    params: dict[str, str] = {}
    history = any(m.tool_calls or m.role == "tool" for m in request.messages)
    if request.tools or history:
        params[capabilities.TOOLS] = "tools" if request.tools else "messages"
    choice = request.tool_choice
    calls = bool(request.tools) and choice != "none"
    if calls and choice in (None, "auto"):
        params[capabilities.TOOL_CHOICE_AUTO] = "tool_choice"
    if request.logprobs:
        params[capabilities.LOGPROBS] = "logprobs"
    form = request.response_format
    json_answer = form is not None and form.type != "text"
    if json_answer:
        params[capabilities.STRUCTURED_OUTPUT] = "response_format"
    return Needs(frozenset(params), params, constrained=calls or json_answer)
