"""User mistakes at the command line: one plain line, a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def agoranet(*args: str, module: str = "agoranet") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120
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
        # cheats and chaos are no options of the production node (agoranet.testing's only)
        (["node", "--cheat", "int4"], 2, "No such option '--cheat'"),
        (["node", "--cheat-payments", "resync"], 2, "No such option '--cheat-payments'"),
        (["node", "--chaos-delay-ms", "40"], 2, "No such option '--chaos-delay-ms'"),
        (["node", "--chaos-stall-after", "3"], 2, "No such option '--chaos-stall-after'"),
        (["model", "tiny", "/proc/forbidden/tiny", "--steps", "1"], 1, "error:"),
    ],
)
def test_bad_input_is_one_line(args: list[str], code: int, needle: str) -> None:
    result = agoranet(*args)
    assert result.returncode == code, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["node", "--cheat", "int3"], "unknown cheat 'int3'"),
        (["node", "--cheat", "smaller"], "smaller:PATH"),
        (["node", "--cheat-payments", "nope"], "unknown payment cheat 'nope'"),
        (["node", "--chaos-fail-after", "0"], "Invalid value for '--chaos-fail-after'"),
    ],
)
def test_bad_test_only_node_options_are_one_line(args: list[str], needle: str) -> None:
    """The test-only node (python -m agoranet.testing node) checks its wrappers' names."""
    result = agoranet(*args, module="agoranet.testing")
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_help_lists_commands() -> None:
    result = agoranet("--help")
    assert result.returncode == 0
    assert "node" in result.stdout and "model" in result.stdout
