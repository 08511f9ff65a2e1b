"""Log lines written by a thread of their own while a server runs, not by the event loop.

A node or a gateway logs a line per request (:func:`~agoranet.api.logformat.log_event`).
Written by the event loop, each line is formatted and written there, a write to a pipe or
a terminal the loop waits for: one reader slow to take them (a paused terminal, a busy
log collector) would stop every request the server is serving. Within
:func:`logging_off_the_loop` the root logger's handlers move behind a queue: a record is
queued as it is (formatted later, on the logging thread, by the handlers' own
formatters), the thread writes the lines in order, and on exit the queue is drained and
the handlers put back where they were. Records made on the event loop reach the thread
in batches (:class:`~agoranet.loop_batch.LoopBatch`: a request's line does not wake the
thread on the way of the next request; it is written within
:data:`~agoranet.loop_batch.HAND_OVER_S`).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import QueueHandler, QueueListener

from agoranet.loop_batch import LoopBatch

__all__ = ["logging_off_the_loop"]


class _Enqueue(QueueHandler):
    """Queues records unformatted (formatting is the logging thread's work), those made on
    an event loop in batches."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.batch: LoopBatch[logging.LogRecord] = LoopBatch(self._hand_over)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        self.batch.add(record)

    def _hand_over(self, records: list[logging.LogRecord]) -> None:
        for record in records:
            self.queue.put_nowait(record)


@contextmanager
def logging_off_the_loop() -> Iterator[None]:
    """While this lasts, the root logger's handlers run on a logging thread."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    if not handlers:
        yield
        return
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = QueueListener(records, *handlers, respect_handler_level=True)
    enqueue = _Enqueue(records)
    for handler in handlers:
        root.removeHandler(handler)
    root.addHandler(enqueue)
    listener.start()
    try:
        yield
    finally:
        root.removeHandler(enqueue)
        enqueue.batch.drain()
        listener.stop()  # every queued line written
        for handler in handlers:
            root.addHandler(handler)
