"""One store's writes on a thread of its own, in order, off the event loop.

:class:`StoreWriter` runs the writes it is given one after the other on one
daemon thread (so on one connection, in the order they were given). A caller
that needs its write done before it goes on awaits :meth:`StoreWriter.call`
(the loop serves other requests meanwhile); a write nothing waits for -- a log
row, a reputation event -- is handed over with :meth:`StoreWriter.submit` and
never waits at all: made on an event loop, it goes to the thread with the others
made within :data:`~agoranet.loop_batch.HAND_OVER_S` (:class:`~agoranet.loop_batch.LoopBatch`:
one wake of the thread for them all, none on the way of the request that made it),
and before any later awaited write. :meth:`StoreWriter.flush` waits until every
write handed over so far has run (a reader that must see them calls it first), and
:meth:`StoreWriter.close` flushes, then stops the thread: every submitted write
is on disk once the store is closed.

A submitted write that fails is logged (nothing waits for it to report to).
The node's ledger has its own writer with group commit
(:class:`~agoranet.payments.accept.ledger_writer.LedgerWriter`); this one is for the
gateway's stores, whose commits do not sync (WAL, ``synchronous=NORMAL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from agoranet.loop_batch import LoopBatch

__all__ = ["StoreWriter"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class StoreWriter:
    """Writes to one store, run in order on one thread; awaited or fire-and-forget."""

    def __init__(self, name: str = "agoranet-store-writer") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._idle = threading.Condition()
        self._pending = 0  # writes handed over and not yet run
        self._closed = False
        self._submitted: LoopBatch[Callable[[], None]] = LoopBatch(self._hand_over)
        self.done = 0  # writes run so far

    async def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the writer thread, after every write handed over before; its
        result (or exception) once it has run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if future.done():  # the caller was cancelled meanwhile
                return
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        def job() -> None:
            try:
                result: Any = fn()
                ok = True
            except BaseException as exc:  # handed back to the caller
                result, ok = exc, False
            # RuntimeError: the caller's loop is closed, nobody waits any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, ok, result)

        self._put(job)
        return await future

    def submit(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the writer thread, after every write handed over before; return
        at once. A failure is logged."""
        def job() -> None:
            try:
                fn()
            except Exception:
                logger.exception("a write by %s failed", self._name)

        self._count_in()
        self._submitted.add(job)

    def flush(self) -> None:
        """Wait until every write handed over so far has run (from any thread but the
        writer's own, where it returns at once)."""
        if threading.current_thread() is self._thread:
            return
        self._submitted.drain()
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def close(self) -> None:
        """Run every write handed over, then stop the thread; later writes are refused."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._submitted.drain()
        if thread is not None:
            self._queue.put(None)
            thread.join()

    @property
    def pending(self) -> int:
        """Writes handed over and not yet run."""
        return self._pending

    def _put(self, job: Callable[[], None]) -> None:
        """Hand ``job`` over now, after the submitted writes held for their batch."""
        self._count_in()
        self._submitted.drain()
        self._queue.put(job)

    def _count_in(self) -> None:
        """One more write for the thread (started now if it is not yet)."""
        with self._start_lock:
            if self._closed:
                raise RuntimeError(f"{self._name} is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            with self._idle:
                self._pending += 1

    def _hand_over(self, jobs: list[Callable[[], None]]) -> None:
        for job in jobs:
            self._queue.put(job)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            finally:
                with self._idle:
                    self._pending -= 1
                    self.done += 1
                    self._idle.notify_all()
