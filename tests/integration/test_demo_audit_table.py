"""Issue #15 item 9: the demo's audit table says why a node is banned.

A node banned for cutting answers has passed (or never had) an audit: a bare
"banned: yes" beside "passed" read as if the audit had banned it.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI
from rich.console import Console

from agoranet.demo import network_step
from agoranet.node.launcher import running_command
from helpers import node_process, rigged_node_process

pytestmark = pytest.mark.slow

FREE = ["--free", "--no-fine-tuning", "--no-adapters"]


def _wait(gateway: str, urls: list[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = httpx.get(gateway.removesuffix("/v1") + "/agoranet/nodes").json()["nodes"]
        if all(any(r["url"] == u and r["models"] for r in rows) for u in urls):
            return
        time.sleep(0.2)
    raise TimeoutError("the gateway never saw the nodes' offers")


def test_audit_table_says_why_a_node_is_banned(tiny_model: Path, tmp_path: Path) -> None:
    model = ["--model", str(tiny_model)]
    with (rigged_node_process([*model, *FREE, "--chaos-fail-after", "3"]) as cutter,
          node_process([*model, *FREE, "--price-in", "500", "--price-out", "900"]) as honest):
        args = ["gateway", "--open", "--node", cutter, "--node", honest,
                "--spend-log", str(tmp_path / "spend.sqlite")]
        with running_command(args, timeout=120) as gateway:
            _wait(gateway, [cutter, honest])
            client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
            stream = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Tell me a story."}],
                temperature=0, stream=True, extra_body={"agoranet": {"prefer": "cheapest"}})
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            out = io.StringIO()
            console = Console(file=out, width=80, force_terminal=False)
            table = getattr(network_step, "audit_table", None) or network_step._audit_table  # type: ignore[attr-defined]
            table(gateway, {cutter: "budget", honest: "honest"}, console)
    text = out.getvalue()
    print(text)
    assert all(len(line) <= 80 for line in text.splitlines())
    flat = " ".join(text.replace("│", " ").split())
    # The cutter's row: its name, no audit, and why it is banned (the gateway's event
    # without its time stamp: the cut stream); the honest node is not banned.
    assert re.search(r"budget 0 - yes: [a-z]+ failed \(", flat), text
    assert "honest 0 - no" in flat, text
