"""A paid embeddings request with a ``"stream": true`` in its body (embeddings have no
stream; the field is an unknown extra) is answered whole, and charged its input tokens
like any other: an extra field never makes a paid answer free.

Same node as test_paid_embeddings_rules.py (in process, the tiny embedding model, the
acceptor on a fake chain with a real SQLite ledger and real receipt signatures)."""

from __future__ import annotations

import pytest

from agoranet.payments import x402wire
from agoranet.payments.receipts import Receipt, verify_receipt

from .acceptor_support import CID, MAX, NODE, pay
from .test_paid_embeddings_rules import BODY, Node, invariants, node, post

__all__ = ["node"]  # the fixture, shared

pytestmark = pytest.mark.timeout(60)


async def test_an_embeddings_request_saying_stream_is_charged_its_input_tokens(
        node: Node) -> None:
    paid = await post(node, {**BODY, "stream": True},
                      **{x402wire.PAYMENT_SIGNATURE: pay(MAX), "x-request-id": "emb-s"})
    assert paid.status_code == 200, paid.text
    (tokens,) = node.prepares
    assert paid.json()["usage"]["prompt_tokens"] == tokens and len(paid.json()["data"]) == 2
    settle = x402wire.decode_json(paid.headers[x402wire.PAYMENT_RESPONSE], "x")
    receipt = Receipt.from_json(settle["extra"]["receipt"])
    verify_receipt(receipt, NODE.address)
    assert (receipt.request_id, receipt.tokens_in, receipt.tokens_out, receipt.amount) == \
        ("emb-s", tokens, 0, 1000 * tokens)
    assert node.charged() == 1000 * tokens
    assert [r.amount for r in node.ledger.receipts(CID)] == [1000 * tokens]
    invariants(node)
