"""While a server runs, its log lines are written by a thread of their own: a handler slow
to write (a paused terminal, a busy collector) no longer holds up the caller -- the event
loop -- and every line still comes out, in order, formatted by the handler's formatter."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from agoranet.api.logformat import JsonFormatter, log_event
from agoranet.api.queued_logging import logging_off_the_loop


class SlowHandler(logging.Handler):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.lines: list[str] = []
        self.threads: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(self.delay)
        self.threads.add(threading.current_thread().name)
        self.lines.append(self.format(record))


@pytest.fixture(autouse=True)
def clean_root() -> Iterator[None]:
    """The root logger without the handlers it had (pytest adds its own around each test),
    restored after."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for handler in saved:
        root.removeHandler(handler)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def test_a_slow_handler_does_not_hold_up_the_caller() -> None:
    slow = SlowHandler(0.05)
    slow.setFormatter(logging.Formatter("%(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(slow)
    root.setLevel(logging.INFO)
    log = logging.getLogger("agoranet.test")
    with logging_off_the_loop():
        assert slow not in root.handlers  # moved behind the queue
        started = time.perf_counter()
        for i in range(10):
            log.info("line %d of %s", i, "ten")
        took = time.perf_counter() - started
    assert took < 0.1  # ten lines at 50 ms each would take 0.5 s written here
    assert slow.lines == [f"agoranet.test line {i} of ten" for i in range(10)]  # all, in order
    assert threading.current_thread().name not in slow.threads
    assert slow in root.handlers  # put back


def test_events_keep_their_fields_and_levels() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.WARNING)  # a handler's own level still applies
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    events = logging.getLogger("agoranet.events")
    level = events.level
    events.setLevel(logging.INFO)
    try:
        with logging_off_the_loop():
            log_event("request", path="/v1/chat/completions", status=200)  # INFO: dropped
            logging.getLogger("agoranet.test").warning("disk %s", "full")
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("agoranet.test").exception("it failed")
    finally:
        events.setLevel(level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["level"], line["message"]) for line in lines] == [
        ("WARNING", "disk full"), ("ERROR", "it failed")]
    assert "ValueError: boom" in lines[1]["exc"]
