"""Blocking chain I/O for async code: a small dedicated thread pool with deadlines.

web3 is synchronous, so async code runs chain calls in threads. Running them in
asyncio's default pool (``asyncio.to_thread``) lets a frozen RPC -- one that
accepts connections and never answers -- take every worker that pool shares
with everything else, one per waiting request. :class:`ChainExecutor` instead
runs them on its own pool of ``workers`` threads and

* gives up waiting after a deadline, time in the queue included
  (:class:`ChainTimeoutError`); a call still queued then never runs, and one
  already running ends when its own HTTP timeout fires (see
  :func:`agoranet.chain.rpc.http_provider`), and
* refuses at once when ``max_pending`` calls are already queued or running
  (:class:`ChainBusyError`): the RPC is slow or frozen, and waiting in line
  behind all of them would only stall the request longer.

So however many requests arrive, at most ``workers`` threads wait on the chain.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final, TypeVar

from agoranet.errors import ChainBusyError, ChainTimeoutError

__all__ = ["DEFAULT_WORKERS", "THREAD_PREFIX", "ChainExecutor"]

T = TypeVar("T")

DEFAULT_WORKERS: Final = 4
THREAD_PREFIX: Final = "agoranet-chain"


class ChainExecutor:
    """Runs blocking chain calls on ``workers`` dedicated threads, each call with a deadline."""

    def __init__(self, *, workers: int = DEFAULT_WORKERS, timeout: float = 5.0,
                 max_pending: int | None = None, name: str = THREAD_PREFIX) -> None:
        if workers < 1 or timeout <= 0:
            raise ValueError("a chain executor needs at least one worker and a positive timeout")
        self.workers = workers
        self.timeout = timeout
        self.max_pending = max_pending if max_pending is not None else 16 * workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._running = 0  # calls submitted and not finished, abandoned ones included

    @property
    def pending(self) -> int:
        """Calls queued or running (a running one whose caller gave up included)."""
        return self._running

    async def call(self, fn: Callable[[], T], *, what: str,
                   deadline: float | None = -1.0) -> T:
        """``fn()`` in a chain thread; waits at most ``deadline`` seconds (the executor's
        timeout by default, ``None`` for no deadline, e.g. for a transaction that must
        not be abandoned once sent: its own HTTP timeouts bound it).

        :class:`ChainBusyError` if ``max_pending`` calls are already waiting,
        :class:`ChainTimeoutError` if ``fn`` did not return in time; ``fn``'s own
        exceptions pass through.
        """
        limit = self.timeout if deadline is not None and deadline < 0 else deadline
        with self._lock:
            if self._running >= self.max_pending:
                raise ChainBusyError(
                    f"{what}: {self._running} chain calls are already waiting on the RPC "
                    "(it is slow or not answering); try again shortly")
            self._running += 1
        try:
            future = self._pool.submit(fn)
        except RuntimeError:  # the pool was shut down
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limit)
        except TimeoutError:
            raise ChainTimeoutError(
                f"{what}: the chain RPC did not answer within {limit:g} s") from None

    def _finished(self, _future: Future[T] | None) -> None:
        with self._lock:
            self._running -= 1

    def close(self) -> None:
        """Stop taking calls; threads still waiting end with their HTTP timeouts."""
        self._pool.shutdown(wait=False, cancel_futures=True)
