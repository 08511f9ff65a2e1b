"""The chaos ``kill-at-receipt:K``: a node process dies as its K-th running receipt of a
stream, already recorded, is about to be sent (the real kill is exercised by
tests/integration/test_gateway_killed_at_receipt.py; here the kill is recorded instead)."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from agoranet.errors import ConfigError
from agoranet.testing import receipt_kill
from agoranet.testing.chaos import chaos_middleware
from agoranet.testing.receipt_kill import KillAtReceipt

FRAMES = [b'data: {"choices":[{"delta":{"content":"w1 "}}]}\n\n',
          b'data: {"object":"agoranet.receipt.running","choices":[]}\n\n',
          b'data: {"choices":[{"delta":{"content":"w2 "}}]}\n\n',
          b'data: {"object":"agoranet.receipt.running","choices":[]}\n\n',
          b"data: [DONE]\n\n"]


async def _stream(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for frame in FRAMES:
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_the_spec_names_the_receipt_counted_from_one() -> None:
    made = chaos_middleware("kill-at-receipt:2")
    assert made.cls is KillAtReceipt and made.kwargs == {"at": 2}
    for spec in ("kill-at-receipt:0", "kill-at-receipt:x", "kill-at-receipt"):
        with pytest.raises(ConfigError):
            chaos_middleware(spec)


@pytest.mark.parametrize(("at", "sent"), [(1, 1), (2, 3)])
async def test_it_dies_before_the_kth_running_receipt_goes_out(
        monkeypatch: pytest.MonkeyPatch, at: int, sent: int) -> None:
    killed: list[Any] = []

    class Died(Exception):
        pass

    def kill(pid: int, sig: int) -> None:
        killed.append(sig)
        raise Died  # the process would be gone: nothing after it runs

    monkeypatch.setattr(receipt_kill.os, "kill", kill)
    out: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            out.append(message["body"])

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "path": "/v1/chat/completions"}
    with pytest.raises(Died):
        await KillAtReceipt(_stream, at=at)(scope, receive, send)
    assert killed == [signal.SIGKILL] and out == FRAMES[:sent]
