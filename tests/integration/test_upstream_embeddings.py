"""Embeddings through the ``upstream`` engine: passed through to a real upstream node's
``/v1/embeddings``, offered only where the upstream embeds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from agoranet.engines import capabilities
from agoranet.engines.embeddings import EmbeddingJob
from agoranet.engines.upstream import UpstreamEngine
from helpers import node_process

pytestmark = pytest.mark.slow

TEXTS = ["The river runs past the old town.", "hello"]


@pytest.fixture(scope="module")
def upstream(embedding_model: Path) -> Iterator[str]:
    with node_process(["--model", str(embedding_model), "--no-fine-tuning",
                       "--no-adapters"]) as url:
        yield url


def test_embeddings_pass_through_to_the_upstream(upstream: str) -> None:
    with node_process(["--engine", "upstream", "--upstream-url", upstream,
                       "--price-in", "100", "--free"]) as front:
        offer = httpx.get(front.removesuffix("/v1") + "/.well-known/agoranet").json()
        direct = OpenAI(base_url=upstream, api_key="x", max_retries=0)
        proxied = OpenAI(base_url=front, api_key="x", max_retries=0)
        for encoding in ("float", "base64"):
            a = direct.embeddings.create(model="tiny-embed", input=TEXTS,
                                         encoding_format=encoding)  # type: ignore[arg-type]
            b = proxied.embeddings.create(model="tiny-embed", input=TEXTS,
                                          encoding_format=encoding)  # type: ignore[arg-type]
            assert [d.embedding for d in a.data] == [d.embedding for d in b.data]
            assert a.usage.prompt_tokens == b.usage.prompt_tokens > len(TEXTS)
    assert capabilities.EMBEDDINGS in offer["models"][0]["capabilities"]


async def test_an_upstream_that_does_not_embed_is_not_offered_for_it(tiny_node: str) -> None:
    engine = UpstreamEngine(tiny_node)
    try:
        # the worker's shared tiny node may also list adapters other tests uploaded
        [info] = [m for m in engine.models() if m.name == "tiny"]
        assert capabilities.EMBEDDINGS not in info.capabilities
        from agoranet.errors import UpstreamError

        with pytest.raises(UpstreamError) as refused:
            await engine.prepare_embeddings(EmbeddingJob("tiny", ["x"]))
        assert refused.value.status_code == 400
    finally:
        await engine.aclose()


async def test_the_upstream_engine_counts_no_more_than_it_priced(upstream: str) -> None:
    engine = UpstreamEngine(upstream)
    try:
        prepared = await engine.prepare_embeddings(EmbeddingJob("tiny-embed", TEXTS))
        # no /tokenize for an embedding model there: bounded by the inputs' bytes
        assert prepared.prompt_tokens >= sum(len(t.encode()) for t in TEXTS)
        result = await engine.embed(prepared)
        direct = httpx.post(f"{upstream}/embeddings", json={
            "model": "tiny-embed", "input": TEXTS}).json()
        assert result.vectors == [d["embedding"] for d in direct["data"]]
        assert result.prompt_tokens == direct["usage"]["prompt_tokens"] <= prepared.prompt_tokens
    finally:
        await engine.aclose()
