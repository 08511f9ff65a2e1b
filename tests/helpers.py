"""Shared helpers for tests: the tiny model, node subprocesses."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
from filelock import FileLock

from agoranet.node.launcher import free_port, running_node

__all__ = ["EMBED_DIR", "ROOT", "SMALL_DIR", "TINY_DIR", "bound_socket", "ensure_embedding_model",
           "ensure_small_model", "ensure_tiny_model", "free_port", "logged", "node_process",
           "rigged_node_process", "served", "served_on_a_thread", "wait_until"]

ROOT = Path(__file__).resolve().parents[1]
TINY_DIR = Path(os.environ.get("AGORANET_TINY_MODEL", ROOT / "models" / "tiny"))
SMALL_DIR = Path(os.environ.get("AGORANET_SMALL_MODEL", ROOT / "models" / "tiny-small"))
EMBED_DIR = ROOT / "models" / "tiny-embed"
node_process = running_node
# The test-only node (python -m agoranet.testing node): cheats and chaos by name ("rigged":
# not named test_*, which pytest would collect).
rigged_node_process = partial(running_node, module="agoranet.testing")


def bound_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1, for an in-process uvicorn server
    (``server.serve(sockets=[sock])``): a port only found free (:func:`free_port`) can be
    taken by another process before the server binds it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def wait_until(check: Callable[[], object], what: str = "a condition", timeout: float = 30.0,
               every: float = 0.2, detail: Callable[[], str] | None = None) -> None:
    """Poll ``check`` until it holds; the test fails after ``timeout`` seconds, saying
    ``what`` it waited for (and ``detail()``, if given)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (
            f"\n{detail()}" if detail is not None else "")
        time.sleep(every)


def logged(log: Path, holds: Callable[[str], bool], what: str, timeout: float = 20.0) -> str:
    """The text of a running server's log once ``holds`` it: a server writes its log lines
    on a thread of its own (``agoranet.api.queued_logging``), so a line logged before an
    answer may reach the file just after the answer reaches the client."""
    def text() -> str:
        return log.read_text(encoding="utf-8")

    wait_until(lambda: holds(text()), f"a log line: {what}", timeout, every=0.05,
               detail=lambda: text()[-3000:])
    return text()


def _ensure(directory: Path, size: str) -> Path:
    """The tiny model of preset ``size`` in ``directory``, built once (under a lock: xdist
    workers share it)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        if not (directory / "model.safetensors").exists():
            from agoranet.tinymodel import SIZES, build_tiny_model

            build_tiny_model(directory, SIZES[size])
    return directory


def ensure_tiny_model() -> Path:
    """The embedded tiny model."""
    return _ensure(TINY_DIR, "default")


def ensure_embedding_model() -> Path:
    """The tiny embedding model (a small random BERT, sentence-transformers layout)."""
    EMBED_DIR.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(EMBED_DIR) + ".lock"):
        if not (EMBED_DIR / "modules.json").exists():
            from agoranet.tinymodel.embedding import build_tiny_embedding_model

            build_tiny_embedding_model(EMBED_DIR)
    return EMBED_DIR


def ensure_small_model() -> Path:
    """A smaller model trained the same way (same tokenizer and corpus): the "smaller" cheat."""
    return _ensure(SMALL_DIR, "small")


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """``app`` (an ASGI app, its lifespan run) behind a real uvicorn server in this process,
    on a port bound here first (:func:`bound_socket`); its root URL. On exit the server
    stops after its open responses (a stream the app kept open would hang it here)."""
    sock = bound_socket()
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await task
        finally:
            sock.close()


@contextmanager
def served_on_a_thread(config: Callable[[int], uvicorn.Config], wait: float = 10.0
                       ) -> Iterator[tuple[str, int]]:
    """A real uvicorn server on a thread of its own (on uvloop where installed, as it serves
    in production), with the config ``config(port)`` makes for a port bound here first;
    its address. Stopped on exit."""
    sock = bound_socket()
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(config(port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(int(wait / 0.02)):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.02)
        assert server.started, "the server did not start"
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(wait)
        sock.close()
