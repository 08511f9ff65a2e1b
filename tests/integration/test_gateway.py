"""The gateway with real processes: three nodes at different prices, the openai client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from agoranet.node.launcher import free_port, running_command
from helpers import node_process

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Tell me about the library."}]
PRICES = {"cheap": (50, 150), "middle": (100, 300), "dear": (400, 1200)}


@pytest.fixture(scope="module")
def network(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Three nodes and a gateway over them (plus a dead URL, cheapest of all, never up)."""
    home = tmp_path_factory.mktemp("gw")
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(node_process([
                "--model", str(tiny_model), "--price-in", str(p_in), "--price-out", str(p_out),
                "--no-fine-tuning", "--no-adapters", "--free"]))
            for name, (p_in, p_out) in PRICES.items()
        }
        urls["dead"] = f"http://127.0.0.1:{free_port()}/v1"
        args = ["gateway", "--open", "--spend-log", str(home / "spend.sqlite")]
        for url in urls.values():
            args += ["--node", url]
        urls["gateway"] = stack.enter_context(running_command(args))
        yield urls


def spend_rows(gateway: str) -> list[dict[str, object]]:
    return httpx.get(f"{gateway.removesuffix('/v1')}/agoranet/nodes").json()["nodes"]


def test_answers_through_the_gateway_equal_a_direct_node(network: dict[str, str]) -> None:
    direct = OpenAI(base_url=network["cheap"], api_key="x").chat.completions.create(
        model="tiny", messages=QUESTION, temperature=0)
    client = OpenAI(base_url=network["gateway"], api_key="x", max_retries=0)
    plain = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0,
                                                stream=True)
        if c.choices
    )
    assert plain.choices[0].message.content == direct.choices[0].message.content == streamed
    assert plain.usage is not None and direct.usage is not None
    assert plain.usage.completion_tokens == direct.usage.completion_tokens


def test_logprobs_come_through_the_gateway_as_the_node_gives_them(
        network: dict[str, str]) -> None:
    """``logprobs`` is relayed, not dropped: the same tokens and numbers as a direct node,
    plain and streamed."""
    asked = {"model": "tiny", "messages": QUESTION, "temperature": 0, "max_tokens": 8,
             "logprobs": True, "top_logprobs": 2}
    direct = OpenAI(base_url=network["cheap"], api_key="x").chat.completions.create(**asked)
    client = OpenAI(base_url=network["gateway"], api_key="x", max_retries=0)
    plain = client.chat.completions.create(**asked)
    streamed = [entry for c in client.chat.completions.create(**asked, stream=True)
                if c.choices and c.choices[0].logprobs
                for entry in c.choices[0].logprobs.content or []]
    expected = direct.choices[0].logprobs
    assert expected is not None and expected.content
    got = plain.choices[0].logprobs
    assert got is not None and got.content is not None
    assert [(e.token, round(e.logprob, 4), len(e.top_logprobs)) for e in got.content] == \
        [(e.token, round(e.logprob, 4), len(e.top_logprobs)) for e in expected.content]
    assert [e.token for e in streamed] == [e.token for e in expected.content]
    assert len(got.content) == plain.usage.completion_tokens  # type: ignore[union-attr]


def test_models_lists_the_network(network: dict[str, str]) -> None:
    listed = httpx.get(f"{network['gateway']}/models").json()["data"]
    assert [m["id"] for m in listed] == ["tiny"]
    assert listed[0]["agoranet"] == {
        "nodes": 3, "cheapest_price": {"input_per_million": 50, "output_per_million": 150}}


def test_cheapest_node_gets_the_traffic_and_the_dead_one_is_skipped(
    network: dict[str, str],
) -> None:
    client = OpenAI(base_url=network["gateway"], api_key="x", max_retries=0)
    served = []
    for _ in range(5):
        reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=8,
                                               extra_body={"agoranet": {"prefer": "cheapest"}})
        served.append(reply.model_extra["agoranet"]["nodes"])  # type: ignore[index]
    assert all(nodes == [network["cheap"]] for nodes in served)
    dead = next(r for r in spend_rows(network["gateway"]) if r["url"] == network["dead"])
    assert dead["offer_error"] and dead["successes"] == 0


def test_a_price_cap_keeps_dearer_nodes_out(network: dict[str, str]) -> None:
    client = OpenAI(base_url=network["gateway"], api_key="x", max_retries=0)
    reply = client.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=4,
        extra_body={"agoranet": {"prefer": "fastest", "deny": [network["cheap"]],
                                 "max_price_out": 300}})
    assert reply.model_extra["agoranet"]["nodes"] == [network["middle"]]  # type: ignore[index]
    # Every node is dearer than the cap: a 402 naming the cheapest offer, nobody blamed.
    with pytest.raises(openai.APIStatusError, match="within the price cap") as refused:
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4,
                                       extra_body={"agoranet": {"max_price_out": 10}})
    assert refused.value.status_code == 402
    assert network["cheap"] in refused.value.message


def test_unknown_model_and_bad_input(network: dict[str, str]) -> None:
    client = OpenAI(base_url=network["gateway"], api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="no node on the network"):
        client.chat.completions.create(model="nope", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny", messages=QUESTION, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="agoranet"):
        client.chat.completions.create(model="tiny", messages=QUESTION,
                                       extra_body={"agoranet": {"prefer": "random"}})


def test_nodes_cli_shows_the_table(network: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "agoranet", "nodes", "--gateway",
                             network["gateway"].removesuffix("/v1")],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    for name in ("cheap", "middle", "dear", "dead"):
        assert network[name] in result.stdout
    states = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("http")]
    assert states.count("ok") >= 3 and "no offer" in result.stdout


def test_budget_is_never_exceeded_with_20_concurrent_clients(
    tiny_model: Path, tmp_path: Path, network: dict[str, str]
) -> None:
    budget = 5  # base units; each request reserves 1 at the middle node's prices
    args = ["gateway", "--open", "--node", network["middle"], "--budget", str(budget),
            "--spend-log", str(tmp_path / "spend.sqlite")]
    with running_command(args) as gateway:
        client = AsyncOpenAI(base_url=gateway, api_key="x", max_retries=0)

        async def one() -> int:
            try:
                reply = await client.chat.completions.create(
                    model="tiny", messages=QUESTION, max_tokens=32)
            except openai.APIStatusError as exc:
                assert exc.status_code == 402 and "budget" in str(exc)
                return 0
            return int(reply.model_extra["agoranet"]["amount"])  # type: ignore[index]

        async def run() -> list[int]:
            return await asyncio.gather(*(one() for _ in range(20)))

        amounts = asyncio.run(run())
        state = httpx.get(f"{gateway.removesuffix('/v1')}/agoranet/nodes").json()["budget"]
    assert sum(amounts) == state["spent"] <= budget
    assert 0 < sum(1 for a in amounts if a) < 20  # some served, the rest refused
    assert state["reserved"] == 0


def test_commitments_through_the_gateway_verify(
        network: dict[str, str], tiny_loaded: object) -> None:
    """A buyer asks the gateway for commitments: the node's proofs come back in the summary,
    streamed and not, and they verify against the reference weights."""
    from agoranet.engines.base import GenerationRequest, Message
    from agoranet.proofs.commitments import Commitments
    from agoranet.verify.commitment_audit import verify_commitments

    client = OpenAI(base_url=network["gateway"], api_key="x", max_retries=0)
    ask = {"agoranet": {"commitments": True, "prefer": "cheapest"}}
    plain = client.chat.completions.create(model="tiny", messages=QUESTION, temperature=0,
                                           max_tokens=40, logprobs=True, extra_body=ask)
    summary = plain.model_extra["agoranet"]  # type: ignore[index]
    [proved] = summary["commitments"]
    assert proved["node"] == network["cheap"] and proved["proofs"]
    streamed = [c.model_extra.get("agoranet") for c in client.chat.completions.create(
        model="tiny", messages=QUESTION, temperature=0, max_tokens=40, stream=True,
        extra_body=ask) if c.model_extra and c.model_extra.get("agoranet")]
    assert streamed and streamed[-1]["commitments"][0]["proofs"] == proved["proofs"]
    # The gateway asks for no token ids; the verifier re-tokenises the greedy answer here.
    text = plain.choices[0].message.content or ""
    ids = tiny_loaded.tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
    if plain.choices[0].finish_reason == "stop":  # the end-of-sequence token was generated too
        ids.append(min(tiny_loaded.eos_ids))  # type: ignore[attr-defined]
    request = GenerationRequest(model="tiny", messages=(Message("user", QUESTION[0]["content"]),),
                                max_tokens=40, temperature=0.0, commitments=True)
    found = Commitments.from_wire({k: v for k, v in proved.items() if k != "node"})
    assert plain.usage is not None and len(ids) == plain.usage.completion_tokens
    result = verify_commitments(tiny_loaded, request, ids, found)
    assert result.passed, result.reason
    plain_cost = client.chat.completions.create(
        model="tiny", messages=QUESTION, temperature=0, max_tokens=40,
        extra_body={"agoranet": {"prefer": "cheapest"}}).model_extra["agoranet"]  # type: ignore[index]
    assert "commitments" not in plain_cost
