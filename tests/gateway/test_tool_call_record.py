"""What one bought tool call returns and leaves behind: the answer, the spend row, the
seller's events and reputation, the log lines, and the reason when every seller fails.

In process, over the in-memory sellers of test_tool_buying.py (real receipts, a real
budget, spend log and reputation store).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_tool_buying import Seller, build

from agoranet.errors import UpstreamError
from agoranet.gateway.reputation import EventKind

__all__ = ["build"]  # the fixture of test_tool_buying.py

Build = Callable[..., Any]
BUYING_LOGGER = "agoranet.gateway.tool_buying"


def events(m: Any, seller: Seller) -> list[str]:
    """The events the directory keeps for ``seller`` (shown by GET /agoranet/tools)."""
    kept: list[str] = m.market.directory.sellers[seller.root].events
    return kept


def test_an_answer_names_the_tool_its_schema_and_seller_and_is_logged_with_its_receipt(
        build: Build) -> None:
    seller = Seller("only", 1000)
    m = build(seller, limit=10_000)
    answer = m.call("hi")
    assert set(answer) == {"object", "id", "tool", "schema_sha256", "seller",
                           "seller_address", "result", "cost", "receipt", "tried"}
    assert answer["object"] == "agoranet.tool_call" and answer["tool"] == "echo"
    assert answer["schema_sha256"] == seller.offer().tools[0].schema_sha256
    assert answer["seller"] == seller.root and answer["seller_address"] == seller.account.address
    (row,) = m.spend.rows()
    assert row.request_id == answer["id"] and row.model == "tool:echo"
    assert (row.prompt_tokens, row.completion_tokens, row.ttft_ms) == (0, 0, None)  # a call
    assert row.receipt is not None and json.loads(row.receipt) == answer["receipt"]
    assert 0 <= row.duration_ms < 60_000  # milliseconds of this call
    assert events(m, seller) == ["success"]


def test_sellers_the_gateway_cannot_pay_are_all_tried_and_named(
        build: Build, caplog: pytest.LogCaptureFixture) -> None:
    first, second = Seller("first", 1000), Seller("second", 1000)
    m = build(first, second)
    m.market.payers = m.market.exact = None  # no wallet: it can pay no one
    caplog.set_level(logging.INFO, logger=BUYING_LOGGER)
    why = "the gateway has no wallet to pay tools with (start it with --rpc-url and a keystore)"
    with pytest.raises(UpstreamError) as failed:
        m.call()
    assert str(failed.value) == (f"every seller of the tool 'echo' failed ({first.root}: "
                                 f"{why}; {second.root}: {why})")
    assert m.spend.rows() == [] and events(m, first) == [] and events(m, second) == []
    infos = [r.getMessage() for r in caplog.records if r.name == BUYING_LOGGER]
    assert infos == [f"tool echo at {s.root} not bought: {why}" for s in (first, second)]


def test_a_failing_seller_is_recorded_with_why_and_logged(
        build: Build, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    bad, good = Seller("bad", 1000, "fails"), Seller("good", 1000)
    m = build(bad, good, limit=10_000)
    caplog.set_level(logging.INFO, logger=BUYING_LOGGER)
    answer = m.call()
    error = "422: the tool raised"
    assert answer["tried"] == [{"seller": bad.root, "error": error, "charged": 0}]
    assert events(m, bad) == [f"failure: {error}"]
    warnings = [r.getMessage() for r in caplog.records
                if r.name == BUYING_LOGGER and r.levelno == logging.WARNING]
    assert warnings == [f"tool echo at {bad.root} failed: {error}"]
    m.reputation.close()
    with sqlite3.connect(tmp_path / "reputation.sqlite") as db:
        rows = db.execute("SELECT node, url, kind, model, detail FROM events ORDER BY id"
                          ).fetchall()
    assert rows == [(bad.account.address, bad.root, str(EventKind.FAILURE), "tool:echo", error),
                    (good.account.address, good.root, str(EventKind.SUCCESS), "tool:echo", "")]


def test_a_sellers_events_keep_the_last_twenty_and_details_are_cut(
        build: Build, tmp_path: Path) -> None:
    seller = Seller("s", 1000)
    m = build(seller)
    ts = m.market.directory.sellers[seller.root]
    for i in range(25):
        m.market._record(ts, EventKind.FAILURE, "echo", f"e{i}")
    assert ts.events == [f"failure: e{i}" for i in range(5, 25)]
    m.market._record(ts, EventKind.FAILURE, "echo", "x" * 700)
    record = m.reputation.record(seller.account.address)
    assert record.failures == 26
    m.reputation.close()
    with sqlite3.connect(tmp_path / "reputation.sqlite") as db:
        (detail,) = db.execute("SELECT detail FROM events ORDER BY id DESC LIMIT 1").fetchone()
    assert detail == "x" * 500
