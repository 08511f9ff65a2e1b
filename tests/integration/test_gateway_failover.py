"""Failover mid-answer: a node dies while streaming and the next one continues the text."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from agoranet.node.launcher import free_port, running_command, wait_healthy
from helpers import node_process, rigged_node_process

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Tell me a short story."}]


def start_node(tiny_model: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    """The test-only node (cheats, chaos) on ``port``."""
    return subprocess.Popen(
        [sys.executable, "-m", "agoranet.testing", "node", "--model", str(tiny_model), "--free",
         "--no-fine-tuning", "--no-adapters", "--port", str(port), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


@pytest.fixture
def backup(tiny_model: Path) -> Iterator[str]:
    with node_process(["--model", str(tiny_model), "--free", "--no-fine-tuning",
                       "--no-adapters", "--price-in", "500", "--price-out", "900"]) as url:
        yield url


def test_node_killed_mid_stream_is_replaced_seamlessly(
    tiny_model: Path, backup: str, tmp_path: Path
) -> None:
    healthy = OpenAI(base_url=backup, api_key="x").chat.completions.create(
        model="tiny", messages=QUESTION, temperature=0).choices[0].message.content or ""
    port = free_port()
    # The first node is cheapest and slow (40 ms a token), so the kill lands mid-answer.
    victim = start_node(tiny_model, port, "--chaos-delay-ms", "40")
    victim_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_healthy(victim, f"http://127.0.0.1:{port}/health", 60)
        args = ["gateway", "--open", "--node", victim_url, "--node", backup,
                "--spend-log", str(tmp_path / "spend.sqlite")]
        with running_command(args, timeout=120) as gateway:
            _wait_for_offer(gateway, victim_url)
            client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
            stream = client.chat.completions.create(
                model="tiny", messages=QUESTION, temperature=0, stream=True,
                stream_options={"include_usage": True},
                extra_body={"agoranet": {"prefer": "cheapest"}})
            pieces: list[str] = []
            stamps: list[float] = []
            summary = None
            for chunk in stream:
                stamps.append(time.perf_counter())
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    if len(pieces) == 6:
                        os.kill(victim.pid, signal.SIGKILL)
                if chunk.usage is not None:
                    summary = chunk.model_extra.get("agoranet") if chunk.model_extra else None
    finally:
        victim.kill()
        victim.wait()
    joined = "".join(pieces)
    pause_ms = max(b - a for a, b in itertools.pairwise(stamps)) * 1000
    print(f"\nlongest pause the client saw: {pause_ms:.0f} ms")
    assert joined == healthy
    assert summary is not None and summary["nodes"] == [victim_url, backup]
    assert summary["failovers"] == 1


def _wait_for_offer(gateway: str, node_url: str) -> None:
    import httpx

    deadline = time.monotonic() + 30
    root = gateway.removesuffix("/v1")
    while time.monotonic() < deadline:
        rows = httpx.get(f"{root}/agoranet/nodes").json()["nodes"]
        if any(r["url"] == node_url and r["models"] for r in rows):
            return
        time.sleep(0.2)
    raise TimeoutError(f"gateway never saw {node_url}'s offer")


def test_langchain_chat_openai_through_the_gateway(backup: str, tmp_path: Path) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    args = ["gateway", "--open", "--node", backup, "--spend-log", str(tmp_path / "spend.sqlite")]
    with running_command(args) as gateway:
        _wait_for_offer(gateway, backup)
        llm = langchain_openai.ChatOpenAI(base_url=gateway, api_key="x", model="tiny",
                                          temperature=0, max_retries=0)
        reply = llm.invoke("Hello!")
        streamed = "".join(str(c.content) for c in llm.stream("Hello!"))
    assert isinstance(reply.content, str) and len(reply.content.split()) >= 3
    assert streamed == reply.content


def test_hedging_sends_to_a_second_node_when_the_first_is_slow(
    tiny_model: Path, backup: str, tmp_path: Path
) -> None:
    with rigged_node_process(["--model", str(tiny_model), "--free", "--no-fine-tuning",
                               "--no-adapters", "--chaos-delay-ms", "1500"]) as slow:
        args = ["gateway", "--open", "--node", slow, "--node", backup,
                "--spend-log", str(tmp_path / "spend.sqlite")]
        with running_command(args) as gateway:
            _wait_for_offer(gateway, slow)
            _wait_for_offer(gateway, backup)
            client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
            hedged = client.chat.completions.create(
                model="tiny", messages=QUESTION, temperature=0,
                extra_body={"agoranet": {"prefer": "cheapest", "hedge_after_ms": 200}})
            started = time.perf_counter()
            patient = client.chat.completions.create(
                model="tiny", messages=QUESTION, temperature=0, max_tokens=3,
                extra_body={"agoranet": {"prefer": "cheapest"}})
            patient_s = time.perf_counter() - started
            import httpx

            rows = httpx.get(f"{gateway.removesuffix('/v1')}/agoranet/nodes").json()["nodes"]
    # the cheapest (slow) node was asked first; after 200 ms the backup too, and it won
    assert hedged.model_extra["agoranet"]["nodes"] == [backup]  # type: ignore[index]
    assert patient_s > 1.5  # the slow node is slow (its 1.5 s delay): hedging was needed
    assert patient.model_extra["agoranet"]["nodes"] == [slow]  # type: ignore[index]
    slow_row = next(r for r in rows if r["url"] == slow)
    assert slow_row["failures"] == 0  # losing a hedge is not a failure
