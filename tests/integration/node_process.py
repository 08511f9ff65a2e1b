"""A node process a test can SIGKILL and start again on the same port and state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from agoranet.node.launcher import free_port

__all__ = ["NodeProcess"]


class NodeProcess:
    """``python -m MODULE node ARGS --port PORT`` (``agoranet``, or the test-only node of
    ``agoranet.testing``: chaos and cheats), its output appended to ``log``; ``env`` over
    this process's environment (one OpenMP thread unless it says otherwise)."""

    def __init__(self, args: Sequence[str], log: Path, *, port: int | None = None,
                 module: str = "agoranet", env: Mapping[str, str] | None = None) -> None:
        self.args, self.log, self.module = list(args), log, module
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start it (not yet ready: see :meth:`wait_ready`)."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, "node", *self.args, "--port",
                 str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=self.env)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until its /health answers 200; AssertionError (its log's end) if it exits first
        or takes longer than ``timeout`` seconds."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"node exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (a graceful stop), SIGKILL after 15 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
