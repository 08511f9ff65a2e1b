"""Log lines written by a thread of their own while a server runs, not by the event loop.

A node or a gateway logs a line per request (:func:`~agoranet.api.logformat.log_event`).
Written by the event loop, each line is formatted and written there, a write to a pipe or
a terminal the loop waits for: one reader slow to take them (a paused terminal, a busy
log collector) would stop every request the server is serving. Within
:func:`logging_off_the_loop` the root logger's handlers move behind a queue: a record is
queued as it is (formatted later, on the logging thread, by the handlers' own
formatters), the thread writes the lines in order, and on exit the queue is drained and
the handlers put back where they were.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import QueueHandler, QueueListener

__all__ = ["logging_off_the_loop"]


class _Enqueue(QueueHandler):
    """Queues records unformatted: formatting is the logging thread's work."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


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
        listener.stop()  # every queued line written
        for handler in handlers:
            root.addHandler(handler)
