"""A node that stalls after its first tokens, alive and sending keep-alives, is failed over:
the client gets one whole answer from the backup, in bounded time, and nothing stays
reserved of the gateway's budget."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from agoranet.node.launcher import running_command
from helpers import node_process, rigged_node_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

QUESTION = [{"role": "user", "content": "Tell me a short story."}]
COMMON = ["--free", "--no-fine-tuning", "--no-adapters"]


def test_a_node_stalling_after_its_first_tokens_is_failed_over(
    tiny_model: Path, tmp_path: Path
) -> None:
    with (node_process(["--model", str(tiny_model), *COMMON, "--price-in", "500",
                        "--price-out", "900"]) as backup,
          rigged_node_process(["--model", str(tiny_model), *COMMON, "--price-in", "100",
                                "--price-out", "300", "--chaos-stall-after", "3"]) as stalled):
        healthy = OpenAI(base_url=backup, api_key="x", max_retries=0).chat.completions.create(
            model="tiny", messages=QUESTION, temperature=0, max_tokens=24,
        ).choices[0].message.content
        args = ["gateway", "--open", "--node", stalled, "--node", backup, "--budget", "10000000",
                "--token-timeout", "1", "--spend-log", str(tmp_path / "spend.sqlite")]
        with running_command(args) as gateway:
            root = gateway.removesuffix("/v1")
            _wait_for_offers(root, [stalled, backup])
            # Without the deadline, the keep-alives would hold this request for good: the
            # client's own timeout bounds it.
            client = OpenAI(base_url=gateway, api_key="x", max_retries=0, timeout=30)
            pieces: list[str] = []
            summary = None
            for chunk in client.chat.completions.create(
                    model="tiny", messages=QUESTION, temperature=0, max_tokens=24, stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"agoranet": {"prefer": "cheapest"}}):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    summary = (chunk.model_extra or {}).get("agoranet")
            state = httpx.get(f"{root}/agoranet/nodes", timeout=10).json()
    assert "".join(pieces) == healthy  # one whole answer, continued by the backup
    assert summary is not None and summary["nodes"] == [stalled, backup]
    assert summary["failovers"] == 1
    budget = state["budget"]
    assert budget["reserved"] == 0 and budget["spent"] == summary["amount"] > 0
    rows = {r["url"]: r for r in state["nodes"]}
    assert rows[stalled]["failures"] == 1 and rows[stalled]["banned"]
    assert "stalled" in (rows[stalled]["ban_reason"] or "")
    assert rows[backup]["failures"] == 0


def _wait_for_offers(root: str, urls: list[str]) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = httpx.get(f"{root}/agoranet/nodes", timeout=5).json()["nodes"]
        if all(any(r["url"] == u and r["models"] for r in rows) for u in urls):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the gateway never saw the offers of {urls}")
