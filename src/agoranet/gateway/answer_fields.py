"""The fields every gateway answer adds from its relay result: OpenAI's ``usage`` and the
``agoranet`` summary (request id, nodes, amount, failovers, commitments)."""

from __future__ import annotations

from typing import Any

from agoranet.gateway.relay import RelayResult

__all__ = ["summary_of", "usage_of"]


def usage_of(result: RelayResult) -> dict[str, int]:
    """OpenAI's ``usage`` object for the tokens of ``result``."""
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def summary_of(result: RelayResult) -> dict[str, Any]:
    """The ``agoranet`` field: who served the request, what it cost, how often it failed over
    (and the nodes' commitments, when there are any)."""
    summary: dict[str, Any] = {"request_id": result.request_id, "nodes": result.nodes,
                               "amount": result.amount, "failovers": result.failovers}
    if result.commitments:
        summary["commitments"] = result.commitments
    return summary
