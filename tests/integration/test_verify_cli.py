"""`agoranet verify` against real node processes: an honest node passes, an int4 one fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import rigged_node_process

pytestmark = pytest.mark.slow


def verify(node: str, reference: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agoranet", "verify", "--node", node,
                           "--reference", str(reference), "--model", "tiny"],
                          capture_output=True, text=True, timeout=180)


def test_honest_passes_and_cheat_fails(tiny_model: Path, tiny_node: str) -> None:
    honest = verify(tiny_node, tiny_model)
    assert honest.returncode == 0, honest.stdout + honest.stderr
    assert "pass" in honest.stdout
    with rigged_node_process(["--model", str(tiny_model), "--cheat", "int4",
                               "--no-fine-tuning", "--no-adapters"]) as cheat:
        caught = verify(cheat, tiny_model)
    assert caught.returncode == 3, caught.stdout + caught.stderr
    assert "FAIL" in caught.stdout


def test_an_unreachable_node_is_a_clear_error(tiny_model: Path, tiny_node: str) -> None:
    result = verify(tiny_node.replace("/v1", "/nope/v1"), tiny_model)
    assert result.returncode == 1 and "did not answer an audit challenge" in result.stderr
    assert "Traceback" not in result.stderr
