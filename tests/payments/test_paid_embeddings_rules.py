"""Paid ``POST /v1/embeddings`` in process: the paid-inference service prices an embeddings
request by its input tokens (prepared once), takes the voucher, charges the usage the
route records and signs its receipt; a bad request or a failed one costs nothing.

The acceptor runs on a fake chain (acceptor_support: a real SQLite ledger, real receipt
signatures) and the engine is the tiny embedding model; the same path through a gateway
and a real chain is in tests/integration/test_gateway_embeddings.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.chain.executor import ChainExecutor
from agoranet.config import NodeSettings
from agoranet.engines.embeddings import EmbeddingJob, PreparedEmbeddings
from agoranet.engines.hf import transformers_engine
from agoranet.market import TokenPrices
from agoranet.node.app import create_app
from agoranet.node.embedding_payments import EMBEDDINGS_PATH, EmbeddingPaymentMiddleware
from agoranet.node.embeddings import EmbeddingService
from agoranet.node.service import InferenceService
from agoranet.payments import x402wire
from agoranet.payments.accept.acceptor import PaymentAcceptor
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import Receipt, verify_receipt

from .acceptor_support import CID, MAX, NODE, Chain, acceptor, pay

pytestmark = pytest.mark.timeout(60)

MODEL = "tiny-embed"
PRICE_IN = 1_000_000_000  # 1000 base units per input token
BODY = {"model": MODEL, "input": ["hello there", "a river"]}


@dataclass
class Node:
    ledger: SqliteLedger
    acceptor: PaymentAcceptor
    app: Any
    prepares: list[int]  # input tokens of each embeddings request the engine prepared

    def charged(self) -> int:
        record = self.ledger.channel(CID)
        return 0 if record is None else record.charged


@pytest.fixture
async def node(embedding_model: Path) -> AsyncIterator[Node]:
    engine = transformers_engine(str(embedding_model), device="cpu")
    prepares: list[int] = []
    prepare = engine.prepare_embeddings

    async def counted(job: EmbeddingJob) -> PreparedEmbeddings:
        prepared = await prepare(job)
        prepares.append(prepared.prompt_tokens)
        return prepared

    engine.prepare_embeddings = counted  # type: ignore[method-assign]
    executor = ChainExecutor(workers=1, timeout=1.0)
    ledger = SqliteLedger(":memory:")
    paying = acceptor(Chain(), ledger, executor)
    inner = create_app(engine, NodeSettings(fine_tuning=False, free=True))
    app = EmbeddingPaymentMiddleware(
        inner, embeddings=EmbeddingService(engine), acceptor=paying,
        service=InferenceService(engine), prices=lambda model: TokenPrices(PRICE_IN, 0))
    try:
        yield Node(ledger, paying, app, prepares)
    finally:
        await engine.aclose()
        paying.writer.close()
        ledger.close()
        executor.close()


async def post(node: Node, body: dict[str, Any], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=node.app),
                                 base_url="http://node") as client:
        return await client.post(EMBEDDINGS_PATH, json=body, headers=headers)


def assert_charged_input_tokens(node: Node, paid: httpx.Response, request_id: str,
                                tokens: int) -> None:
    """A paid embeddings answer of two vectors for ``tokens`` input tokens, with its signed
    receipt (1,000 a token, no output) and the same charge in the ledger; the invariants."""
    assert paid.json()["usage"]["prompt_tokens"] == tokens
    assert len(paid.json()["data"]) == 2
    settle = x402wire.decode_json(paid.headers[x402wire.PAYMENT_RESPONSE], "x")
    receipt = Receipt.from_json(settle["extra"]["receipt"])
    verify_receipt(receipt, NODE.address)
    assert (receipt.request_id, receipt.tokens_in, receipt.tokens_out, receipt.amount) == \
        (request_id, tokens, 0, 1000 * tokens)
    assert node.charged() == 1000 * tokens
    invariants(node)


def invariants(node: Node) -> None:
    record = node.ledger.channel(CID)
    if record is not None:
        assert record.charged == sum(r.amount for r in node.ledger.receipts(CID))
        assert record.charged <= record.voucher_amount
        assert record.pending_request is None


async def test_an_embeddings_request_costs_its_input_tokens_and_is_prepared_once(
        node: Node) -> None:
    unpaid = await post(node, BODY)
    assert unpaid.status_code == 402
    (tokens,) = node.prepares
    assert tokens > 0
    worst = unpaid.json()["x402"]["accepts"][0]["amount"]
    assert worst == str(1000 * tokens)  # the input tokens at the input price, no output
    paid = await post(node, BODY, **{x402wire.PAYMENT_SIGNATURE: pay(MAX),
                                     "x-request-id": "emb-1"})
    assert paid.status_code == 200, paid.text
    assert node.prepares == [tokens, tokens]  # once per request: priced and run alike
    assert_charged_input_tokens(node, paid, "emb-1", tokens)


@pytest.mark.parametrize(("body", "status"), [
    ({"model": MODEL, "input": []}, 400),
    ({"model": "nope", "input": "x"}, 404),
    ({"model": MODEL, "input": "x", "dimensions": "many"}, 400),
])
async def test_a_bad_embeddings_request_is_refused_before_any_payment(
        node: Node, body: dict[str, Any], status: int) -> None:
    response = await post(node, body, **{x402wire.PAYMENT_SIGNATURE: pay(MAX)})
    assert response.status_code == status
    assert x402wire.PAYMENT_REQUIRED not in response.headers
    assert x402wire.PAYMENT_RESPONSE not in response.headers
    assert response.json()["error"]["message"]
    assert node.ledger.channel(CID) is None  # no voucher taken
