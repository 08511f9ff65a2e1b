"""The gateway audits the nodes that serve it and drops one serving rounded weights."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from agoranet.node.launcher import running_command
from helpers import node_process, rigged_node_process, wait_until

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Hello!"}]


def test_a_cheating_node_is_caught_banned_and_dropped(tiny_model: Path, tmp_path: Path) -> None:
    common = ["--model", str(tiny_model), "--free", "--no-fine-tuning", "--no-adapters"]
    with node_process(common) as honest, rigged_node_process([*common, "--cheat", "int4"]) as cheat:
        args = ["gateway", "--open", "--node", honest, "--node", cheat, "--audit-reference",
                str(tiny_model), "--audit-share", "1", "--spend-log",
                str(tmp_path / "spend.sqlite")]
        with running_command(args) as gateway:
            root = gateway.removesuffix("/v1")
            client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
            for url in (honest, cheat):  # each node serves once, and so gets audited
                wait_until(lambda u=url: any(r["url"] == u and r["models"] for r in _rows(root)))
                client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4,
                                               extra_body={"agoranet": {"allow": [url]}})
            wait_until(lambda: all(r["audits"] for r in _rows(root)), timeout=120)
            rows = {r["url"]: r for r in _rows(root)}
            after = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4)
    assert rows[cheat]["audits"][-1].startswith("FAILED") and rows[cheat]["banned"]
    assert rows[honest]["audits"][-1].startswith("passed") and not rows[honest]["banned"]
    assert after.model_extra["agoranet"]["nodes"] == [honest]  # type: ignore[index]


def _rows(root: str) -> list[dict[str, object]]:
    return list(httpx.get(f"{root}/agoranet/nodes", timeout=10).json()["nodes"])
