"""The gateway's embeddings relay against simulated nodes: failover before an answer, a
buyer's mistake sent back at once, refusals that are not a node's fault, answers of the
wrong shape, and the budget and spend log balanced after each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.api.embeddings import EmbeddingRequest
from agoranet.errors import NodesDeclinedError, RequestError, UpstreamError
from agoranet.gateway.budget import Budget
from agoranet.gateway.embeddings import input_bounds, relay_embeddings
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.policy import Policy
from agoranet.gateway.relay import RelayResult
from agoranet.gateway.spendlog import SpendLog
from agoranet.registry.offer import ModelOffer, Offer, Price

pytestmark = pytest.mark.timeout(20)

BODY = {"model": "e", "input": ["one", "two"]}


def node(url: str) -> NodeState:
    offer = Offer(engine="sim", models=[ModelOffer(
        id="e", context_length=64, price=Price(input_per_million=1_000_000,
                                               output_per_million=0),
        capabilities=["embeddings"])])
    return NodeState(url, offer=offer)


def answer(count: int = 2, tokens: int = 6) -> httpx.Response:
    return httpx.Response(200, json={
        "object": "list", "model": "e",
        "data": [{"object": "embedding", "index": i, "embedding": [0.5, float(i)]}
                 for i in range(count)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message}})


async def run(replies: dict[str, httpx.Response], tmp_path: Path,
              policy: Policy | None = None) -> tuple[dict[str, Any], list[str],
                                                     list[NodeState], RelayResult, SpendLog]:
    nodes = [node(f"http://{host}/v1") for host in replies]
    budget = Budget(limit=10_000)
    spend = SpendLog(tmp_path / "spend.sqlite")
    result = RelayResult("emb-1")
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/embeddings"
        asked.append(request.url.host)
        return replies[request.url.host]

    try:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            got = await relay_embeddings(
                client, [(n, n.offer.models[0]) for n in nodes],  # type: ignore[union-attr]
                BODY, 30, policy or Policy(), budget, spend, result)
    finally:
        assert budget.reserved == 0 and budget.spent == spend.total() == result.amount
    return got, asked, nodes, result, spend


async def test_a_node_that_fails_before_its_answer_is_replaced(tmp_path: Path) -> None:
    got, asked, nodes, result, spend = await run(
        {"a": error(500, "boom"), "b": answer(2, 11)}, tmp_path)
    assert asked == ["a", "b"]
    assert [row["index"] for row in got["data"]] == [0, 1]
    assert nodes[0].banned() and not nodes[1].banned()
    assert result.nodes == ["http://b/v1"] and result.failovers == 1
    assert result.prompt_tokens == 11 and result.amount == 11  # a free node: its list price
    spend.close()


@pytest.mark.parametrize("bad", [answer(count=1), answer(tokens=-1),
                                 httpx.Response(200, content=b"not json"),
                                 httpx.Response(200, json={"data": [{"index": 0}, {"index": 1}],
                                                           "usage": {"prompt_tokens": 1}})])
async def test_an_answer_of_the_wrong_shape_is_a_failure(tmp_path: Path,
                                                         bad: httpx.Response) -> None:
    _, asked, nodes, result, spend = await run({"a": bad, "b": answer()}, tmp_path)
    assert asked == ["a", "b"] and nodes[0].banned() and result.nodes == ["http://b/v1"]
    spend.close()


async def test_a_request_every_node_would_refuse_goes_back_at_once(tmp_path: Path) -> None:
    with pytest.raises(RequestError) as caught:
        await run({"a": error(400, "input is empty"), "b": answer()}, tmp_path)
    assert caught.value.status_code == 400 and "input is empty" in str(caught.value)


async def test_refusals_that_are_not_the_nodes_fault_do_not_ban(tmp_path: Path) -> None:
    with pytest.raises(NodesDeclinedError) as caught:
        await run({"a": error(404, "no such model"), "b": error(404, "no such model")},
                  tmp_path)
    assert caught.value.status_code == 404


async def test_when_every_node_fails_the_503_names_them(tmp_path: Path) -> None:
    with pytest.raises(UpstreamError) as caught:
        await run({"a": error(500, "boom"), "b": error(503, "busy")}, tmp_path,
                  Policy(max_attempts=2))
    assert caught.value.status_code == 503
    assert "http://a/v1: HTTP 500: boom" in str(caught.value)
    assert "http://b/v1: HTTP 503: busy" in str(caught.value)


def test_the_token_bound_covers_what_a_tokenizer_can_make(tiny_loaded: Any) -> None:
    texts = ["hello", "ünïcödé ☃ text", "a" * 50, "  spaces  "]
    _, ceiling = input_bounds(EmbeddingRequest(model="m", input=texts))
    tokenizer = tiny_loaded.tokenizer
    assert ceiling >= sum(len(tokenizer(t)["input_ids"]) for t in texts)
    assert input_bounds(EmbeddingRequest(model="m", input=[[1, 2, 3], [4]])) == (4, 4)


def offer(*, embeds: bool, price_in: int) -> Offer:
    return Offer(engine="sim", models=[ModelOffer(
        id="e", context_length=64, price=Price(input_per_million=price_in,
                                               output_per_million=0),
        capabilities=["embeddings"] if embeds else [])])


async def test_the_service_asks_only_nodes_that_offer_embeddings(tmp_path: Path) -> None:
    """A cheaper node serving the same model without embeddings is never asked; a model
    served only without them is a 400 naming what is missing; an unknown one a 404."""
    from agoranet.errors import CapabilityNotOfferedError, ModelNotFoundError
    from agoranet.gateway.directory import NodeDirectory
    from agoranet.gateway.embeddings import embed
    from agoranet.gateway.service import GatewayService

    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        return answer(2, 5)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    directory = NodeDirectory([], client)
    for host, embeds, price in (("plain", False, 0), ("embedder", True, 3_000_000)):
        directory.add(f"http://{host}/v1").offer = offer(embeds=embeds, price_in=price)
    budget = Budget(limit=1_000)
    service = GatewayService(directory, Policy(prefer="cheapest"), budget,
                             SpendLog(tmp_path / "spend.sqlite"), client, 16)
    try:
        got, result = await embed(service, dict(BODY))
        assert asked == ["embedder"] and result.nodes == ["http://embedder/v1"]
        assert got["agoranet"]["amount"] == result.amount == 15 == budget.spent
        assert [row["index"] for row in got["data"]] == [0, 1]
        directory.nodes.pop("http://embedder/v1")
        with pytest.raises(CapabilityNotOfferedError, match="offers embeddings"):
            await embed(service, dict(BODY))
        with pytest.raises(ModelNotFoundError):
            await embed(service, {**BODY, "model": "other"})
        with pytest.raises(RequestError, match="commitments"):
            await embed(service, {**BODY, "agoranet": {"commitments": True}})
        assert asked == ["embedder"]
    finally:
        await service.aclose()
