"""A fair step scheduler: one worker thread advances every active sequence in turn.

Each request becomes a :class:`Job` that produces events one decode step at a
time. The worker admits jobs in arrival order up to ``max_active``, then gives
each active job one step per round, so concurrent streams progress together and
a long answer never starves a short one. Beyond ``max_active + max_queue`` jobs,
new requests are refused with :class:`~agoranet.errors.OverloadedError`. Closing
a job's event stream (the client went away) removes it before its next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from agoranet.engines.base import Finish, StreamEvent
from agoranet.errors import OverloadedError

__all__ = ["Job", "StepScheduler"]


class Job(Protocol):
    """One generation that advances by steps on the worker thread."""

    def step(self) -> list[StreamEvent]:
        """Run one step; the last event of the last step is a :class:`Finish`."""
        ...


@dataclass(eq=False)
class _Handle:
    job: Job
    emit: Callable[[StreamEvent | BaseException], None]
    cancelled: bool = False
    done: bool = False
    queue: asyncio.Queue[StreamEvent | BaseException] = field(default_factory=asyncio.Queue)


class StepScheduler:
    """Runs jobs on one worker thread, one step each per round."""

    def __init__(self, *, max_active: int, max_queue: int, name: str = "engine") -> None:
        self.max_active = max_active
        self.max_queue = max_queue
        self._waiting: deque[_Handle] = deque()
        self._active: list[_Handle] = []
        self._cond = threading.Condition()
        self._closed = False
        self.counters = {"completed": 0, "cancelled": 0, "failed": 0, "steps": 0}
        self._thread = threading.Thread(target=self._run, name=f"{name}-worker", daemon=True)
        self._thread.start()

    def stats(self) -> dict[str, int]:
        with self._cond:
            active = sum(1 for handle in self._active if not handle.done)
            return {"active": active, "queued": len(self._waiting), **self.counters}

    async def run(self, job: Job) -> AsyncIterator[StreamEvent]:
        """Submit ``job`` and yield its events; closing the iterator cancels it."""
        handle = self._submit(job)
        try:
            while True:
                item = await handle.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            self._cancel(handle)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------ internals

    def _submit(self, job: Job) -> _Handle:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()

        def emit(item: StreamEvent | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        handle = _Handle(job=job, emit=emit, queue=queue)
        with self._cond:
            if self._closed:
                raise OverloadedError("engine is shutting down", retry_after=5)
            if len(self._active) + len(self._waiting) >= self.max_active + self.max_queue:
                raise OverloadedError(
                    f"engine is busy: {len(self._active)} generating, "
                    f"{len(self._waiting)} queued; retry shortly",
                    retry_after=1,
                )
            self._waiting.append(handle)
            self._cond.notify()
        return handle

    def _cancel(self, handle: _Handle) -> None:
        with self._cond:
            if handle.done:
                return
            handle.cancelled = True
            if handle in self._waiting:
                self._waiting.remove(handle)
                handle.done = True
                self.counters["cancelled"] += 1

    def _next_round(self) -> list[_Handle] | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                self._active = [h for h in self._active if not h.done]
                while self._waiting and len(self._active) < self.max_active:
                    self._active.append(self._waiting.popleft())
                if self._active:
                    return list(self._active)
                self._cond.wait()

    def _run(self) -> None:
        while (handles := self._next_round()) is not None:
            self._round(handles)

    def _round(self, handles: list[_Handle]) -> None:
        """One round: a step of each active job, in turn (a batching scheduler overrides it)."""
        for handle in handles:
            self._advance(handle)

    def _advance(self, handle: _Handle) -> None:
        if handle.cancelled:
            self._finish(handle, "cancelled")
            return
        try:
            events = handle.job.step()
        except Exception as exc:  # surfaced to the request that owns the job
            self._finish(handle, "failed")
            handle.emit(exc)
            return
        self.counters["steps"] += 1
        self._deliver(handle, events)

    def _deliver(self, handle: _Handle, events: list[StreamEvent],
                 release: Callable[[], None] | None = None) -> None:
        """Hand a step's ``events`` to the request; a last :class:`Finish` ends the job,
        counted (and ``release`` run) before the request can see its end."""
        finished = bool(events) and isinstance(events[-1], Finish)
        for event in events[:-1] if finished else events:
            handle.emit(event)
        if finished:
            if release is not None:
                release()
            self._finish(handle, "completed")
            handle.emit(events[-1])

    def _finish(self, handle: _Handle, outcome: str) -> None:
        with self._cond:
            handle.done = True
            self.counters[outcome] += 1
