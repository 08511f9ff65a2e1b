"""Work an event loop hands to a thread goes in batches (``agoranet.loop_batch``), and the
two users of it keep their promises: a store writer's fire-and-forget writes made on a
loop run within the batch's delay, in order, before any later awaited write, and are in
the store after a flush or close; a server's log records made on a loop are written
within the delay, in order, all of them by the end."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from agoranet.api.queued_logging import logging_off_the_loop
from agoranet.loop_batch import HAND_OVER_S, LoopBatch
from agoranet.store_writer import StoreWriter


class Batches:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: list[str] = []

    def __call__(self, batch: list[int]) -> None:
        self.batches.append(batch)
        self.threads.append(threading.current_thread().name)


def test_off_a_loop_each_item_is_handed_over_at_once() -> None:
    seen = Batches()
    batch = LoopBatch(seen)
    batch.add(1)
    batch.add(2)
    assert seen.batches == [[1], [2]] and batch.held == 0


def test_on_a_loop_items_are_held_and_handed_over_together_after_the_delay() -> None:
    seen = Batches()

    async def go() -> float:
        batch = LoopBatch(seen, delay_s=0.05)
        started = time.monotonic()
        for n in range(5):
            batch.add(n)
        assert seen.batches == [] and batch.held == 5
        while not seen.batches:
            await asyncio.sleep(0.005)
        return time.monotonic() - started

    waited = asyncio.run(go())
    assert seen.batches == [[0, 1, 2, 3, 4]]
    assert 0.04 <= waited < 1.0


def test_drain_and_an_item_made_off_the_loop_hand_over_what_is_held_first() -> None:
    seen = Batches()
    batch = LoopBatch(seen, delay_s=10)

    async def hold(*items: int) -> None:
        for item in items:
            batch.add(item)

    asyncio.run(hold(1, 2))
    batch.add(3)  # off the loop: after 1 and 2
    asyncio.run(hold(4))
    batch.drain()
    batch.drain()  # nothing held: nothing handed over
    assert seen.batches == [[1, 2, 3], [4]]


def test_a_batch_whose_loop_stopped_goes_with_the_next_item() -> None:
    seen = Batches()
    batch = LoopBatch(seen, delay_s=0.01)

    async def hold(item: int) -> None:
        batch.add(item)

    asyncio.run(hold(1))  # the loop ends before its timer runs
    time.sleep(0.03)
    asyncio.run(hold(2))  # overdue: handed over at once, with the new one
    assert seen.batches == [[1, 2]]


# ---------------------------------------------------------------- the store writer

def test_submitted_writes_from_a_loop_run_in_order_before_a_later_awaited_one() -> None:
    writer = StoreWriter("test-batched-writer")
    ran: list[str] = []

    async def go() -> str:
        for n in range(3):
            writer.submit(lambda n=n: ran.append(f"submitted {n}"))
        assert writer.pending == 3
        return await writer.call(lambda: ran.append("awaited") or "done")

    try:
        assert asyncio.run(go()) == "done"
        assert ran == ["submitted 0", "submitted 1", "submitted 2", "awaited"]
    finally:
        writer.close()


def test_a_submitted_write_runs_within_the_delay_unflushed_and_close_keeps_all() -> None:
    writer = StoreWriter("test-batched-writer")
    ran: list[int] = []

    async def go() -> None:
        writer.submit(lambda: ran.append(1))
        deadline = time.monotonic() + 20 * HAND_OVER_S
        while not ran and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert ran == [1], "not run within the batch's delay"
        writer.submit(lambda: ran.append(2))  # held when the loop ends

    asyncio.run(go())
    writer.close()
    assert ran == [1, 2]


def test_flush_runs_what_is_held() -> None:
    writer = StoreWriter("test-batched-writer")
    ran: list[int] = []

    async def go() -> None:
        writer.submit(lambda: ran.append(1))
        await asyncio.to_thread(writer.flush)  # from another thread, as a reader would
        assert ran == [1]

    try:
        asyncio.run(go())
    finally:
        writer.close()


# ---------------------------------------------------------------------- log lines

class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.written = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.written.set()


@pytest.fixture
def lines() -> Iterator[Lines]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for handler in saved:
        root.removeHandler(handler)
    handler = Lines()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def test_log_records_made_on_a_loop_are_written_in_order_within_the_delay(
        lines: Lines) -> None:
    log = logging.getLogger("agoranet.test.batched")

    async def go() -> None:
        for n in range(3):
            log.info("line %d", n)
        assert lines.lines == []  # held for their batch
        assert await asyncio.to_thread(lines.written.wait, 20 * HAND_OVER_S)
        log.info("held when the server stops")

    with logging_off_the_loop():
        asyncio.run(go())
        deadline = time.monotonic() + 20 * HAND_OVER_S
        while len(lines.lines) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert lines.lines == ["line 0", "line 1", "line 2"]
    assert lines.lines[-1] == "held when the server stops"
