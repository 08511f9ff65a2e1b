"""Run the ``agoranet`` entry point in-process (fast) or as a subprocess, and check errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from agoranet.cli.main import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_inprocess(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str,
    stdin: str = "",
) -> Result:
    """``main()`` exactly as the console script calls it, with argv and stdin patched."""
    with monkeypatch.context() as m:
        m.setattr(sys, "argv", ["agoranet", *args])
        m.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return Result(code, out, err)


def run_subprocess(*args: str, env: dict[str, str] | None = None, stdin: str = "",
                   timeout: float = 120, cwd: str | os.PathLike[str] | None = None) -> Result:
    """A real ``python -m agoranet`` without a controlling terminal (prompts read stdin)."""
    proc = subprocess.run(
        [sys.executable, "-m", "agoranet", *args], input=stdin, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})}, start_new_session=True, cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, needle: str, code: int = 1) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    assert "Traceback" not in result.out + result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 or code == 2, result.err
    assert needle in result.err, result.err
    if code == 1:
        assert lines[0].startswith("error: "), result.err
