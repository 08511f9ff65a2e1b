"""Every outcome of a tool call, counted and said exactly: paid, free, unpaid, refused, failed.

In process, with the recording acceptor of test_tool_payment_rules.py: the call counts
(``GET /tools`` shows them) move by one per call and outcome; an answer carries the tool's
name, its price (0 for a free tool) and its output as text (a string as it is, anything
else as JSON); a failing tool's error names the tool and the exception (cut to 1000
characters) and says nothing was charged; a failed ``exact`` transfer's 402 carries the
tool, its price and why; a paid call is logged with who paid what, a failure with why.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from agoranet.errors import InvalidRequestError, ToolFailedError
from agoranet.tools import ToolServer
from agoranet.tools.payments import ToolPayments
from agoranet.tools.service import Answer, ToolService, Unpaid

from .test_tool_payment_rules import RecordingAcceptor, header

pytestmark = pytest.mark.timeout(30)

SERVICE_LOGGER = "agoranet.tools.service"


def kit() -> tuple[ToolService, RecordingAcceptor]:
    server = ToolServer("outcomes")

    @server.tool(price=100)
    def echo(text: str) -> str:
        return text

    @server.tool(price=100)
    def pair(text: str) -> dict[str, Any]:
        return {"text": text, "n": len(text)}

    @server.tool(price=0)
    def ping(text: str) -> str:
        return "pong " + text

    @server.tool(price=0)
    def listing(text: str) -> list[str]:
        return [text, text]

    @server.tool(price=0)
    def crash(text: str) -> str:
        raise RuntimeError("x" * 2000)

    @server.tool(price=50)
    def boom(text: str) -> str:
        raise RuntimeError(text)

    @server.tool(price=50)
    def refuse(text: str) -> str:
        raise ToolFailedError(f"cannot {text}")

    acceptor = RecordingAcceptor()
    return ToolService(server, ToolPayments(acceptor)), acceptor  # type: ignore[arg-type]


async def test_answers_carry_the_tool_its_price_and_its_output_as_text() -> None:
    service, _ = kit()
    paid = await service.call("echo", {"text": "hi"}, header("exact", 100), "mcp://tool/echo")
    assert isinstance(paid, Answer)
    assert (paid.tool, paid.price, paid.text) == ("echo", 100, "hi")
    structured = await service.call("pair", {"text": "hi"}, header("exact", 100, tool="pair"),
                                    "mcp://tool/pair")
    assert isinstance(structured, Answer) and structured.tool == "pair"
    assert json.loads(structured.text) == {"text": "hi", "n": 2}
    free = await service.call("ping", {"text": "a"}, None, "mcp://tool/ping")
    assert isinstance(free, Answer)
    assert (free.tool, free.price, free.text, free.payment_response) == ("ping", 0, "pong a",
                                                                         None)
    many = await service.call("listing", {"text": "a"}, None, "mcp://tool/listing")
    assert isinstance(many, Answer) and many.price == 0 and json.loads(many.text) == ["a", "a"]


async def test_every_outcome_is_counted_once_per_call() -> None:
    service, acceptor = kit()
    for _ in range(2):
        assert isinstance(await service.call("echo", {"text": "x"}, header("exact", 100),
                                             "mcp://tool/echo"), Answer)
        assert isinstance(await service.call("ping", {"text": "x"}, None, "mcp://tool/ping"),
                          Answer)
        assert isinstance(await service.call("echo", {"text": "x"}, None, "mcp://tool/echo"),
                          Unpaid)
        with pytest.raises(InvalidRequestError):
            await service.call("echo", {"text": 1}, None, "mcp://tool/echo")
        with pytest.raises(ToolFailedError):
            await service.call("boom", {"text": "no"}, header("exact", 50, tool="boom"),
                               "mcp://tool/boom")
        with pytest.raises(ToolFailedError):
            await service.call("refuse", {"text": "now"}, header("exact", 50, tool="refuse"),
                               "mcp://tool/refuse")
    acceptor.settle_fails = True
    for _ in range(2):
        assert isinstance(await service.call("echo", {"text": "x"}, header("exact", 100),
                                             "mcp://tool/echo"), Unpaid)
    counts = service.counts
    assert (counts.paid, counts.free, counts.unpaid, counts.refused, counts.failed) == \
        (2, 2, 4, 2, 4)


async def test_a_failing_tool_says_which_and_why_and_that_nothing_was_charged(
        caplog: pytest.LogCaptureFixture) -> None:
    service, acceptor = kit()
    caplog.set_level(logging.INFO, logger=SERVICE_LOGGER)
    with pytest.raises(ToolFailedError) as paid:
        await service.call("boom", {"text": "no"}, header("exact", 50, tool="boom"),
                           "mcp://tool/boom")
    assert paid.value.message == "tool boom failed: RuntimeError: no; nothing was charged"
    with pytest.raises(ToolFailedError) as free:
        await service.call("crash", {"text": "x"}, None, "mcp://tool/crash")
    assert free.value.message == \
        ("tool crash failed: RuntimeError: " + "x" * 2000)[:1000] + "; nothing was charged"
    with pytest.raises(ToolFailedError) as own:
        await service.call("refuse", {"text": "now"}, header("exact", 50, tool="refuse"),
                           "mcp://tool/refuse")
    assert own.value.message == "cannot now"  # the tool's own failure, as it says it
    assert acceptor.names() == ["authorize", "release", "authorize", "release"]
    warnings = [r.getMessage() for r in caplog.records
                if r.name == SERVICE_LOGGER and r.levelno == logging.WARNING]
    assert warnings[0] == "tool boom raised RuntimeError: no"
    assert warnings[1] == "tool crash raised RuntimeError: " + "x" * 2000
    assert len(warnings) == 2


async def test_a_paid_call_is_logged_with_who_paid_what(
        caplog: pytest.LogCaptureFixture) -> None:
    service, _ = kit()
    caplog.set_level(logging.INFO, logger=SERVICE_LOGGER)
    assert isinstance(await service.call("echo", {"text": "x"}, header("exact", 100),
                                         "mcp://tool/echo"), Answer)
    infos = [r.getMessage() for r in caplog.records
             if r.name == SERVICE_LOGGER and r.levelno == logging.INFO]
    assert infos == ["tool echo: 0xpayer paid 100 (exact)"]


async def test_a_failed_transfer_asks_again_for_the_tool_at_its_price() -> None:
    service, acceptor = kit()
    acceptor.settle_fails = True
    outcome = await service.call("echo", {"text": "x"}, header("exact", 100), "mcp://tool/echo")
    assert isinstance(outcome, Unpaid) and outcome.error.reason == "settle_failed"
    required = outcome.required
    assert required is not None and required.error == "settle_failed"
    assert {a.amount for a in required.accepts} == {"100"}
    assert {a.extra["tool"] for a in required.accepts} == {"echo"}
    assert required.resource is not None and required.resource.url == "mcp://tool/echo"
