"""Work an event loop hands to a thread, handed over in batches instead of one by one.

Waking a thread is a system call, and on a busy machine a switch of the processor to
that thread and back: handing it each log record or fire-and-forget store write as it
is made put one wake on every request's path. A :class:`LoopBatch` holds what is made
on an event loop and hands it over together at most ``delay_s`` after the first of it
(a timer on that loop): one wake for all a busy server made meanwhile, and none on the
way of the request that made it. What is made off any event loop is handed over at
once, with what is held before it, so order is kept; :meth:`LoopBatch.drain` hands over
what is held now (before a reader looks, or on close).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Final, Generic, TypeVar

__all__ = ["HAND_OVER_S", "LoopBatch"]

_T = TypeVar("_T")

HAND_OVER_S: Final = 0.05  # the longest a held item waits for its batch to be handed over


class LoopBatch(Generic[_T]):
    """Items made on an event loop, passed to ``hand_over`` in order, in batches."""

    def __init__(self, hand_over: Callable[[list[_T]], None], delay_s: float = HAND_OVER_S
                 ) -> None:
        self._hand_over = hand_over
        self._delay_s = delay_s
        self._held: list[_T] = []
        self._since = 0.0  # when the oldest held item came
        self._lock = threading.Lock()

    def add(self, item: _T) -> None:
        """Hold ``item`` for the batch (on an event loop), or hand it over now with what is
        held (elsewhere, or if the held batch's timer is overdue: its loop has stopped)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            now = time.monotonic()
            if loop is not None and self._delay_s > 0 and \
                    (not self._held or now - self._since < 2 * self._delay_s):
                if not self._held:
                    self._since = now
                    loop.call_later(self._delay_s, self.drain)
                self._held.append(item)
                return
            batch, self._held = [*self._held, item], []
            self._hand_over(batch)

    def drain(self) -> None:
        """Hand over what is held now (nothing if nothing is)."""
        with self._lock:
            batch, self._held = self._held, []
            if batch:
                self._hand_over(batch)

    @property
    def held(self) -> int:
        return len(self._held)
