"""User mistakes at the command line: one plain line, a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def agoranet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agoranet", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["node", "--model", "./no/such/dir"], 1, "no such directory"),
        (["node", "--engine", "nope"], 2, "Invalid value for '--engine'"),
        (["node", "--port", "70000"], 2, "Invalid value for '--port'"),
        (["node", "--engine", "upstream"], 1, "needs --upstream-url"),
        (["node", "--engine", "upstream", "--upstream-url", "http://127.0.0.1:9/v1"], 1,
         "unreachable"),
        (["node", "--price-in", "-1"], 2, "Invalid value for '--price-in'"),
        (["node", "--cheat", "int3"], 2, "unknown cheat 'int3'"),
        (["node", "--cheat", "smaller"], 2, "smaller:PATH"),
        (["model", "tiny", "/proc/forbidden/tiny", "--steps", "1"], 1, "error:"),
    ],
)
def test_bad_input_is_one_line(args: list[str], code: int, needle: str) -> None:
    result = agoranet(*args)
    assert result.returncode == code, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_help_lists_commands() -> None:
    result = agoranet("--help")
    assert result.returncode == 0
    assert "node" in result.stdout and "model" in result.stdout
