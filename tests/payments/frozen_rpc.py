"""A TCP proxy in front of a JSON-RPC endpoint that can be frozen mid-test.

Frozen, it still accepts connections (new ones and kept-alive ones) but never
answers: what a hung RPC node looks like to a client. Real sockets on
127.0.0.1, one thread per direction of each connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

__all__ = ["FreezableProxy", "freezable_proxy", "silent_server"]


class FreezableProxy:
    def __init__(self, upstream: str | None) -> None:
        self.upstream = None
        if upstream is not None:
            parsed = urlparse(upstream)
            self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.frozen = upstream is None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept, name="frozen-rpc", daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._keep(client)
            if self.upstream is None:
                continue  # a server that accepts and never answers
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._keep(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.frozen:  # frozen: swallow requests and answers alike
                    dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._thread.join(timeout=5)


@contextmanager
def freezable_proxy(upstream: str) -> Iterator[FreezableProxy]:
    """A proxy to ``upstream`` (an ``http://host:port`` URL), answering until frozen."""
    proxy = FreezableProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()


@contextmanager
def silent_server() -> Iterator[FreezableProxy]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    proxy = FreezableProxy(None)
    try:
        yield proxy
    finally:
        proxy.close()
