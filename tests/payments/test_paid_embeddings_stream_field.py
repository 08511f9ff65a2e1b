"""A paid embeddings request with a ``"stream": true`` in its body (embeddings have no
stream; the field is an unknown extra) is answered whole, and charged its input tokens
like any other: an extra field never makes a paid answer free.

Same node as test_paid_embeddings_rules.py (in process, the tiny embedding model, the
acceptor on a fake chain with a real SQLite ledger and real receipt signatures)."""

from __future__ import annotations

import pytest

from agoranet.payments import x402wire

from .acceptor_support import CID, MAX, pay
from .test_paid_embeddings_rules import BODY, Node, assert_charged_input_tokens, node, post

__all__ = ["node"]  # the fixture, shared

pytestmark = pytest.mark.timeout(60)


async def test_an_embeddings_request_saying_stream_is_charged_its_input_tokens(
        node: Node) -> None:
    paid = await post(node, {**BODY, "stream": True},
                      **{x402wire.PAYMENT_SIGNATURE: pay(MAX), "x-request-id": "emb-s"})
    assert paid.status_code == 200, paid.text
    (tokens,) = node.prepares
    assert_charged_input_tokens(node, paid, "emb-s", tokens)
    assert [r.amount for r in node.ledger.receipts(CID)] == [1000 * tokens]
