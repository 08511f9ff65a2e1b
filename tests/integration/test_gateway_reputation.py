"""Reputation and the audit budget with real node and gateway processes.

A cheat caught by one gateway run stays banned in the next; audits start only
within their share of what requests spent, and what they cost is in the spend log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.node.launcher import running_command
from agoranet.verify.node_audit import PER_ROUND
from helpers import node_process, rigged_node_process, wait_until

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Hello!"}]
FREE = ["--free", "--no-fine-tuning", "--no-adapters"]


def test_a_failed_audit_outlives_a_gateway_restart(tiny_model: Path, tmp_path: Path) -> None:
    log = str(tmp_path / "gw" / "spend.sqlite")
    common = ["--model", str(tiny_model), *FREE]
    with node_process(common) as honest, rigged_node_process([*common, "--cheat", "int4"]) as cheat:
        audited = ["gateway", "--open", "--node", cheat, "--audit-reference", str(tiny_model),
                   "--audit-share", "1", "--spend-log", log]
        with running_command(audited) as gateway:
            root = gateway.removesuffix("/v1")
            wait_until(lambda: bool(_rows(root)[0]["models"]))
            _ask(gateway)
            wait_until(lambda: bool(_rows(root)[0]["audits"]), timeout=120)
            first = _rows(root)[0]
        assert first["audits"][-1].startswith("FAILED") and first["banned"]

        # A new gateway run over both nodes, without audits: the verdict is remembered.
        with running_command(["gateway", "--open", "--node", honest, "--node", cheat,
                               "--spend-log", log]) as gateway:
            root = gateway.removesuffix("/v1")
            wait_until(lambda: all(r["models"] for r in _rows(root)))
            rows = {r["url"]: r for r in _rows(root)}
            served = _ask(gateway)
            table = _cli("nodes", "--gateway", root, "--wide")
    cheat_row, honest_row = rows[cheat], rows[honest]
    assert cheat_row["banned"] and "failed 1 audit" in cheat_row["ban_reason"]
    assert cheat_row["audits_failed"] == 1 and cheat_row["tokens_audited"] > 0
    assert cheat_row["last_verdict"].startswith("FAILED") and cheat_row["score"] < 0.05
    assert not honest_row["banned"] and honest_row["score"] == 0.5
    assert served["nodes"] == [honest]
    assert "banned" in table and "FAILED" in table
    shown = _cli("reputation", "show", "--reputation-log",
                 str(tmp_path / "gw" / "reputation.sqlite"))
    assert cheat in shown and "banned until" in shown


def test_audits_start_only_within_their_share_of_spend(tiny_model: Path,
                                                       tmp_path: Path) -> None:
    log_path = tmp_path / "spend.sqlite"
    # A free node with a price list: its listed prices value what it gives (1 unit a token).
    priced = ["--model", str(tiny_model), *FREE, "--price-in", "1000000",
              "--price-out", "1000000"]
    with node_process(priced) as node:
        _earlier(log_path, node, 1_000)  # 2% of 1,000 is 20: not one challenge's worth
        args = ["gateway", "--open", "--node", node, "--audit-reference", str(tiny_model),
                "--audit-share", "1", "--spend-log", str(log_path)]
        with running_command(args) as gateway:
            root = gateway.removesuffix("/v1")
            wait_until(lambda: bool(_rows(root)[0]["models"]))
            _ask(gateway)
            status = _status(root)
            time.sleep(1)
            skipped_row = _rows(root)[0]
        assert status["skipped"] == 1 and status["running"] == 0 and status["allowance"] < 40
        assert skipped_row["audits"] == [] and _audit_rows(log_path) == []

        _earlier(log_path, node, 1_000_000)  # now 2% is over 20,000
        with running_command(args) as gateway:
            root = gateway.removesuffix("/v1")
            wait_until(lambda: bool(_rows(root)[0]["models"]))
            _ask(gateway)
            wait_until(lambda: bool(_rows(root)[0]["audits"]), timeout=120)
            status = _status(root)
            verdict = _rows(root)[0]["audits"][-1]
        spent = _cli("spend", "--spend-log", str(log_path))
    assert verdict.startswith("passed")
    audits = _audit_rows(log_path)
    assert len(audits) == PER_ROUND and len({r.request_id for r in audits}) == 1
    assert all(r.amount == r.prompt_tokens + r.completion_tokens > 0 for r in audits)
    audit_total = sum(r.amount for r in audits)
    log = SpendLog(log_path)
    requests_total = log.total() - log.audit_total()
    log.close()
    assert status["spent"] == audit_total and status["skipped"] == 0
    assert 0 < audit_total * 50 <= requests_total  # at most 2% of what requests cost
    assert "audits by model" in spent and str(audit_total) in spent


def _earlier(path: Path, node: str, amount: int) -> None:
    """What requests cost before this run (as a gateway that ran earlier logged it)."""
    log = SpendLog(path)
    log.add(SpendRow(f"earlier-{amount}", "tiny", node, 10, 10, amount, None, 1.0, "ok"))
    log.close()


def _audit_rows(path: Path) -> list[SpendRow]:
    log = SpendLog(path)
    try:
        return [r for r in log.rows() if r.outcome == "audit"]
    finally:
        log.close()


def _ask(gateway: str) -> dict[str, Any]:
    client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="tiny", messages=QUESTION,  # type: ignore[arg-type]
                                           max_tokens=4)
    return dict(reply.model_extra["agoranet"])  # type: ignore[index]


def _cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "agoranet", *args], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def _rows(root: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{root}/agoranet/nodes", timeout=10).json()["nodes"])


def _status(root: str) -> dict[str, Any]:
    return dict(httpx.get(f"{root}/agoranet/nodes", timeout=10).json()["audits"])
