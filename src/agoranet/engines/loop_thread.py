"""An asyncio event loop on a thread of its own, for a library bound to the loop it starts in.

vLLM's ``AsyncLLM`` ties its engine-core client and output handler to the event loop it
first runs in. A node builds its engine before the server's loop exists (and tests, the
calibration and the benches each run their own loops), so the vLLM engine keeps the
library on a :class:`LoopThread` and crosses over: :meth:`LoopThread.call` runs a
coroutine there and waits for it; :meth:`LoopThread.iterate` streams an async iterator
from there into the caller's loop. Closing that stream early cancels the producer in
the worker loop (vLLM then aborts the request), so a client that hangs up stops its
generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


_DONE = object()


class LoopThread:
    """A daemon thread running one event loop until :meth:`close`."""

    def __init__(self, name: str = "loop-thread") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` in the worker loop and wait (from a thread that is not it)."""
        return self.submit(coroutine).result(timeout)

    async def acall(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` in the worker loop and await it from the caller's loop."""
        return await asyncio.wrap_future(self.submit(coroutine))

    async def iterate(self, source: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
        """The items of ``source()`` (iterated in the worker loop), in the caller's loop.

        An error of the source is raised here; closing this iterator (or cancelling the
        task that reads it) cancels the source's task in the worker loop.
        """
        consumer = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def post(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the reader's loop is gone: nobody reads
                consumer.call_soon_threadsafe(queue.put_nowait, item)

        async def pump() -> None:
            try:
                async for item in source():
                    post(item)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                post(_Failed(exc))
            else:
                post(_DONE)

        future = self.submit(pump())
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            future.cancel()  # a no-op once the source is done; else its task is cancelled

    def close(self, timeout: float = 30.0) -> None:
        """Stop the loop (pending tasks are dropped) and wait for the thread."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
