"""Start ``agoranet node`` as a child process and wait until it is healthy."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from agoranet.api.listening import listens
from agoranet.errors import NodeStartError

__all__ = ["free_port", "running_command", "running_node", "wait_healthy"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def running_node(
    args: Sequence[str], *, port: int | None = None, timeout: float = 120.0,
    module: str = "agoranet", output: Path | None = None,
) -> AbstractContextManager[str]:
    """Run ``agoranet node ARGS``; yield its ``http://127.0.0.1:PORT/v1`` URL; stop it after.

    ``module`` is the command's module (``python -m MODULE``): tests and the demo start
    the test-only node of ``agoranet.testing`` (cheats, chaos) this way; ``output``: as for
    :func:`running_command`."""
    return running_command(["node", *args], port=port, timeout=timeout, module=module,
                           output=output)


@contextmanager
def running_command(
    args: Sequence[str], *, port: int | None = None, timeout: float = 120.0,
    module: str = "agoranet", output: Path | None = None,
) -> Iterator[str]:
    """Run ``agoranet ARGS --port PORT`` (a node or a gateway) until healthy; yield its /v1
    URL. ``module``: as for :func:`running_node`. The command's output (stdout and stderr,
    its log lines among them) goes to the file ``output`` if given, else it is read and
    dropped once the command is healthy (a full pipe would block it)."""
    with contextlib.ExitStack() as files:
        sink: IO[str] | int = subprocess.PIPE
        if output is not None:
            sink = files.enter_context(output.open("w", encoding="utf-8"))
        # A port picked here is free only until the command binds it: another process may
        # take it meanwhile (then the command fails to bind, and another port is tried).
        for attempt in range(1 if port else _PORT_TRIES):
            chosen = port or free_port()
            command = [sys.executable, "-m", module, *args, "--port", str(chosen)]
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                       text=True)
            root = f"http://127.0.0.1:{chosen}"
            try:
                wait_healthy(process, f"{root}/health", timeout, output)
                break
            except NodeStartError as exc:
                _stop(process)
                if port or attempt + 1 == _PORT_TRIES or \
                        "address already in use" not in str(exc).lower():
                    raise
            except BaseException:
                _stop(process)
                raise
        try:
            if process.stdout is not None:
                threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
            yield f"{root}/v1"
        finally:
            _stop(process)


_PORT_TRIES = 3


def _stop(process: subprocess.Popen[str]) -> None:
    """End ``process`` (killed if it does not stop within 10 s)."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout:
        process.stdout.close()


def _drain(stream: IO[str]) -> None:
    """Read ``stream`` to its end (or until it is closed), dropping what it says."""
    with contextlib.suppress(ValueError, OSError):
        for _ in stream:
            pass


def wait_healthy(process: subprocess.Popen[Any], health_url: str, timeout: float,
                 output_file: Path | None = None) -> None:
    """Poll ``health_url`` until it answers 200 from ``process`` (the one listening on its
    port: not another that holds the port, while ``process`` fails to bind it); fail if
    ``process`` exits or time runs out (saying what it wrote: its stdout, or
    ``output_file`` where it wrote that)."""
    port = urlsplit(health_url).port
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            if output_file is not None:
                output = output_file.read_text(errors="replace")
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
            raise NodeStartError(f"process exited with code {process.returncode}:\n{output.strip()}")
        try:
            if httpx.get(health_url, timeout=1.0).status_code == 200 and \
                    (port is None or listens(process.pid, port)):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise NodeStartError(f"{health_url} did not answer in {timeout:.0f}s")
        time.sleep(0.2)
