"""What a restarted gateway does with the paid fine-tuning jobs a previous run left held,
and how it reads a node's price for a job (unit tests; the paid flow itself runs on real
processes in tests/integration/test_gateway_paid_fine_tune.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from agoranet.errors import UpstreamError
from agoranet.gateway.budget import Budget
from agoranet.gateway.job_paying import JobPayments, _maximum
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.spendlog import SpendLog


def _record(root: Path, folder: str, **fields: Any) -> None:
    path = root / "jobs" / "node" / folder
    path.mkdir(parents=True)
    record = {"job_id": "ftjob-1", "node": "http://n/v1", "model": "tiny", "request_id": "ft-1",
              "amount": 42, "key": None, "keyed": False, "started": 0.0, **fields}
    (path / "job.json").write_text(json.dumps(record))


async def test_a_restart_holds_an_open_gateways_jobs_again(tmp_path: Path) -> None:
    _record(tmp_path, "0")  # an open gateway's job: held again in the global budget
    _record(tmp_path, "1", job_id="ftjob-2", keyed=True, key="k")  # settled by the key store
    _record(tmp_path, "2", job_id=None)  # an answer lost: the channel is never reused
    (tmp_path / "jobs" / "node" / "3").mkdir()
    (tmp_path / "jobs" / "node" / "3" / "job.json").write_text("{not json")
    budget = Budget(100)
    spend = SpendLog(tmp_path / "spend.sqlite")
    payers = NodePayers("http://127.0.0.1:1", Account.create(), tmp_path, 1000)
    async with httpx.AsyncClient() as client:
        jobs = JobPayments(payers, budget, spend, client, httpx.Timeout(1.0))
        assert sorted(jobs.held) == ["ftjob-1", "ftjob-2"]
        assert (budget.reserved, budget.spent) == (42, 0)
        assert len(jobs._busy) == 4
        # a job not ended yet, or another node's, settles nothing
        await jobs.settle(NodeState("http://n/v1"), {"id": "ftjob-1", "status": "running",
                                                      "agoranet": {"payment": {"status": "held"}}})
        await jobs.settle(NodeState("http://other/v1"), {"id": "ftjob-1", "status": "failed"})
        assert sorted(jobs.held) == ["ftjob-1", "ftjob-2"] and budget.reserved == 42
    spend.close()


def _quote(body: object) -> httpx.Response:
    return httpx.Response(402, json=body)


def test_a_jobs_maximum_is_what_the_voucher_allows() -> None:
    node = NodeState("http://n/v1")
    accepts = [{"scheme": "exact", "amount": "5"}, {"scheme": "batch-settlement", "amount": "90"}]
    assert _maximum(node, _quote({"x402": {"accepts": accepts},
                                  "agoranet": {"max_charge": 90}})) == 90
    for bad in ({"x402": {"accepts": [{"scheme": "exact", "amount": "5"}]}},
                {"x402": {"accepts": [{"scheme": "batch-settlement", "amount": "x"}]}},
                {"x402": {"accepts": [{"scheme": "batch-settlement", "amount": "0"}]}},
                {"x402": {"accepts": accepts}, "agoranet": {"max_charge": 91}},  # above it
                {"error": "no terms"}):
        with pytest.raises(UpstreamError):
            _maximum(node, _quote(bad))
