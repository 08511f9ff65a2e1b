"""Issue #19: ``make demo`` ends by printing the dashboards' URLs and secrets, and waits for
Enter only in a terminal (in CI, without one, it never waits)."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

from agoranet.demo.network_step import DemoNetwork
from agoranet.demo.run import show_dashboards

NETWORK = DemoNetwork("http://127.0.0.1:8402", "agn-owner-key",
                      {"shady": "http://127.0.0.1:9001", "steady": "http://127.0.0.1:9002"},
                      {"shady": "ops-one", "steady": "ops-two"})


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _shown(monkeypatch: pytest.MonkeyPatch, stdin: io.StringIO) -> str:
    monkeypatch.setattr(sys, "stdin", stdin)
    out = io.StringIO()
    show_dashboards(NETWORK, Console(file=out, width=200))
    return out.getvalue()


def test_without_a_terminal_it_prints_and_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.StringIO("")  # reading it would raise EOFError: the demo must not read
    text = _shown(monkeypatch, stdin)
    assert "http://127.0.0.1:8402/" in text and "agn-owner-key" in text
    assert "http://127.0.0.1:9001/" in text and "ops-one" in text and "ops-two" in text
    assert "press Enter" not in text


def test_in_a_terminal_it_waits_for_enter(monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = _Terminal("\n")
    text = _shown(monkeypatch, stdin)
    assert "press Enter" in text
    assert stdin.tell() == 1  # the Enter was read
