"""The ledger writer's rules on its sync thread and its failure paths (payments/accept/ledger_writer.py).

On a SQLite group-commit ledger whose sync the test holds, its vouchers written on the
writer thread (``inline=False``) as on PostgreSQL (the writer's logic is the same there,
see test_ledger_writer.py; a local file's vouchers written on the event loop are
test_ledger_writer_loop.py's):

- vouchers handed to the sync thread while it syncs share its next sync, and a writer
  closed meanwhile still makes them durable and answers them before it returns;
- a failed sync fails every voucher it owed with the ledger's error (or a LedgerError
  that names the cause), releases them, and says so in the log -- also when the release
  fails, or when the sync ran on the sync thread;
- a voucher whose caller gave up is released quietly; a failure to release it is logged
  with its cause; a refused voucher whose caller gave up holds nothing to release;
- a writer closed with writes queued writes them first; a group holds MAX_GROUP writes
  at most; a write answered after its caller's event loop closed does not stop the
  writer; a closed writer refuses writes, saying so.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from agoranet.errors import LedgerError
from agoranet.payments.accept.ledger import Hold, VoucherRefused
from agoranet.payments.accept.ledger_writer import MAX_GROUP, LedgerWriter
from agoranet.payments.accept.sqlite_group import SqliteGroupLedger

from .test_ledger_writer import CHAIN, MAX, NODE, Blocker, Gate, cid

pytestmark = pytest.mark.timeout(30)
BOUND = 20  # seconds: what a write the test waits for may take at most, on a loaded machine


@pytest.fixture
def book(tmp_path: Path) -> Any:
    ledger = SqliteGroupLedger(tmp_path / "ledger.sqlite")
    for n in range(1, 6):
        ledger.ensure_channel(cid(n), "{}", NODE.address, 0)
    yield ledger
    ledger.close()


class Pipeline:
    """Groups of writes as the writer forms them, each ended by a write the test holds: a
    voucher's group is handed to the sync thread when, as it ends, more writes wait."""

    def __init__(self, writer: LedgerWriter) -> None:
        self.writer = writer
        self.holding = Blocker()
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        self.tasks.append(asyncio.create_task(self.writer.call(self.holding)))
        await asyncio.to_thread(self.holding.running.wait, BOUND)

    async def group(self, request: str, channel: int) -> asyncio.Task[Hold]:
        """Queue a voucher and a held write, and let the writer go on to them: the group
        written before is handed off; the voucher's, held, is written."""
        accept = asyncio.create_task(
            self.writer.accept_voucher(request, cid(channel), MAX, "0x", MAX))
        await asyncio.sleep(0)
        held = Blocker()
        self.tasks.append(asyncio.create_task(self.writer.call(held)))
        await asyncio.sleep(0)
        self.holding.done.set()
        self.holding = held
        await asyncio.to_thread(held.running.wait, BOUND)
        return accept

    async def finish(self) -> None:
        """Queue a write that owes nothing, let the last group end (handed off), wait."""
        last = asyncio.create_task(self.writer.call(lambda: None))
        await asyncio.sleep(0)
        self.holding.done.set()
        await asyncio.wait_for(asyncio.gather(last, *self.tasks), BOUND)

    def let_go(self) -> None:
        self.holding.done.set()


async def test_vouchers_handed_off_during_a_sync_share_the_next_one(book: Any) -> None:
    gate = Gate(book)
    writer = LedgerWriter(book, inline=False)
    line = Pipeline(writer)
    try:
        await line.start()
        first = await line.group("r1", 1)
        second = await line.group("r2", 2)  # r1's group is handed off
        await asyncio.to_thread(gate.entered.wait, BOUND)  # r1's sync holds the sync thread
        third = await line.group("r3", 3)  # r2's group is handed off
        await line.finish()  # r3's too
        assert not any(t.done() for t in (first, second, third))
        gate.open.set()
        holds = await asyncio.wait_for(asyncio.gather(first, second, third), BOUND)
        assert [h.request_id for h in holds] == ["r1", "r2", "r3"]
        assert gate.calls == 2 and writer.syncs == 2  # r1's, then one for r2 and r3
        assert gate.threads == ["agoranet-ledger-writer-sync"] * 2
        # the groups: the first held write, r1's, r2's and r3's (each with a held write),
        # the last no-op
        assert (writer.groups, writer.writes) == (5, 8)
    finally:
        gate.open.set()
        line.let_go()
        writer.close()


async def test_closing_during_a_sync_still_syncs_and_answers_what_was_handed_off(
        book: Any) -> None:
    gate = Gate(book)
    writer = LedgerWriter(book, inline=False)
    line = Pipeline(writer)
    try:
        await line.start()
        first = await line.group("r1", 1)
        second = await line.group("r2", 2)
        await asyncio.to_thread(gate.entered.wait, BOUND)
        await line.finish()  # r2's group is handed off while r1's sync runs
        closing = asyncio.create_task(asyncio.to_thread(writer.close))
        await asyncio.sleep(0.05)  # close() stops the writer, which tells the sync thread
        gate.open.set()
        await asyncio.wait_for(closing, BOUND)
        holds = await asyncio.wait_for(asyncio.gather(first, second), BOUND)
        assert [h.request_id for h in holds] == ["r1", "r2"]
        assert gate.calls == 2 and writer.syncs == 2
        assert book.channel(cid(2)).pending_request == "r2"  # durable, held
    finally:
        gate.open.set()
        line.let_go()
        writer.close()


@pytest.mark.parametrize("failure", [OSError("disk gone"), LedgerError("the ledger is full")])
async def test_a_failed_sync_on_the_sync_thread_fails_and_releases_its_vouchers(
        failure: BaseException, book: Any, caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate(book)
    gate.fail = failure
    writer = LedgerWriter(book, inline=False)
    line = Pipeline(writer)
    try:
        await line.start()
        accept = await line.group("r1", 1)
        await line.finish()  # handed off
        gate.open.set()
        with pytest.raises(LedgerError) as failed:
            await asyncio.wait_for(accept, BOUND)
        if isinstance(failure, LedgerError):
            assert failed.value is failure  # the ledger's own error, as it said it
        else:
            assert str(failed.value) == "ledger sync failed: disk gone"
        assert gate.threads == ["agoranet-ledger-writer-sync"]
        assert writer.syncs == 0
        channel = book.channel(cid(1))
        assert channel.pending_request is None and channel.voucher_amount == 0
        assert f"ledger group sync failed: {failure}" in caplog.messages
        gate.fail = None
        hold = await asyncio.wait_for(writer.accept_voucher("r2", cid(1), MAX, "0x", MAX),
                                      BOUND)
        assert hold.charged_before == 0 and writer.syncs == 1
    finally:
        gate.open.set()
        line.let_go()
        writer.close()


async def test_a_release_that_fails_after_a_failed_sync_is_logged(
        book: Any, caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate(book)
    gate.fail = OSError("disk gone")
    gate.open.set()

    def release(hold: Hold) -> None:
        raise LedgerError("the ledger is gone")
    book.release = release
    writer = LedgerWriter(book, inline=False)
    try:
        with pytest.raises(LedgerError, match="ledger sync failed: disk gone"):
            await writer.accept_voucher("r1", cid(1), MAX, "0x", MAX)
        assert "could not release r1 after a failed sync: the ledger is gone" in \
            caplog.messages
    finally:
        writer.close()


async def _after(writer: LedgerWriter, released: list[str]) -> None:
    """Until a release was called, then until what it answered was dealt with (a write
    queued after the release is answered after it)."""
    async def called() -> None:
        while not released:
            await asyncio.sleep(0.005)
    await asyncio.wait_for(called(), BOUND)
    await asyncio.wait_for(writer.call(lambda: None), BOUND)
    await asyncio.sleep(0)


async def _give_up(writer: LedgerWriter, request: str, channel: int) -> None:
    """Queue a voucher behind a write that holds the writer, cancel its caller, then let
    the writer go: the voucher is accepted (or refused) for nobody."""
    blocker = Blocker()
    busy = asyncio.create_task(writer.call(blocker))
    await asyncio.to_thread(blocker.running.wait, BOUND)
    accept = asyncio.create_task(writer.accept_voucher(request, cid(channel), MAX, "0x", MAX))
    await asyncio.sleep(0)
    accept.cancel()
    with pytest.raises(asyncio.CancelledError):
        await accept
    blocker.done.set()
    await busy


async def test_a_voucher_whose_caller_gave_up_is_released_quietly(
        book: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    writer = LedgerWriter(book, inline=False)
    released: list[str] = []
    release = book.release

    def counted(hold: Hold) -> Any:
        released.append(hold.request_id)
        return release(hold)
    book.release = counted
    try:
        await _give_up(writer, "r1", 1)
        await _after(writer, released)
        assert released == ["r1"] and book.channel(cid(1)).pending_request is None
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    finally:
        writer.close()


async def test_a_failed_release_of_a_voucher_nobody_waits_for_is_logged(
        book: Any, caplog: pytest.LogCaptureFixture) -> None:
    writer = LedgerWriter(book, inline=False)
    released: list[str] = []

    def release(hold: Hold) -> None:
        released.append(hold.request_id)
        raise LedgerError("the ledger is gone")
    book.release = release
    try:
        await _give_up(writer, "r1", 1)
        await _after(writer, released)
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == \
            ["releasing an abandoned voucher failed: the ledger is gone"]
    finally:
        writer.close()


async def test_a_refused_voucher_whose_caller_gave_up_holds_nothing_to_release(
        book: Any, caplog: pytest.LogCaptureFixture) -> None:
    writer = LedgerWriter(book, inline=False)
    held = await writer.accept_voucher("first", cid(1), MAX, "0x", MAX)
    released: list[str] = []
    book.release = lambda hold: released.append(hold.request_id)
    try:
        await _give_up(writer, "second", 1)  # refused: the channel is busy with "first"
        await asyncio.wait_for(writer.call(lambda: None), BOUND)
        await asyncio.sleep(0)
        assert released == [] and book.channel(cid(1)).pending_request == "first"
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert held.request_id == "first"
        with pytest.raises(VoucherRefused):  # what the caller would have been told
            await writer.accept_voucher("second", cid(1), MAX, "0x", MAX)
    finally:
        writer.close()


async def test_a_closed_writer_says_so(book: Any) -> None:
    writer = LedgerWriter(book, inline=False)
    hold = await writer.accept_voucher("r1", cid(1), MAX, "0x", MAX)
    writer.close()
    for write in (writer.release(hold), writer.commit(hold, 1, 1, 10, NODE.sign, CHAIN),
                  writer.accept_voucher("r2", cid(2), MAX, "0x", MAX)):
        with pytest.raises(LedgerError) as refused:
            await write
        assert str(refused.value) == "the ledger writer is closed"


async def test_the_writers_threads_never_keep_a_process_alive(book: Any) -> None:
    """A node that exits without closing its writer (a crash path, a test) is not held up
    by the writer's threads, which wait for writes for ever: both are daemon threads."""
    writer = LedgerWriter(book, inline=False)
    try:
        await writer.accept_voucher("r1", cid(1), MAX, "0x", MAX)
        threads = [writer._thread, writer._sync_thread]
        assert [t.name if t else None for t in threads] == \
            ["agoranet-ledger-writer", "agoranet-ledger-writer-sync"]
        assert all(t is not None and t.daemon and t.is_alive() for t in threads)
    finally:
        writer.close()


async def test_a_writer_closed_with_writes_queued_writes_them_first(book: Any) -> None:
    writer = LedgerWriter(book, inline=False)
    blocker = Blocker()
    busy = asyncio.create_task(writer.call(blocker))
    try:
        await asyncio.to_thread(blocker.running.wait, BOUND)
        accept = asyncio.create_task(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX))
        await asyncio.sleep(0)
        closing = asyncio.create_task(asyncio.to_thread(writer.close))

        async def stop_queued() -> None:  # close() queued its stop behind the voucher
            while writer._queue.qsize() < 2:
                await asyncio.sleep(0.005)
        await asyncio.wait_for(stop_queued(), BOUND)
        blocker.done.set()
        await asyncio.wait_for(closing, BOUND)
        assert (await asyncio.wait_for(accept, BOUND)).request_id == "r1"
        assert book.channel(cid(1)).pending_request == "r1" and writer.syncs == 1
        await busy
    finally:
        blocker.done.set()
        writer.close()


async def test_a_group_holds_at_most_max_group_writes(book: Any) -> None:
    writer = LedgerWriter(book, inline=False)
    blocker = Blocker()
    try:
        busy = asyncio.create_task(writer.call(blocker))
        await asyncio.to_thread(blocker.running.wait, BOUND)
        queued = [asyncio.create_task(writer.call(lambda: None)) for _ in range(MAX_GROUP + 1)]
        await asyncio.sleep(0)
        blocker.done.set()
        await asyncio.wait_for(asyncio.gather(busy, *queued), BOUND)
        assert (writer.groups, writer.writes) == (3, MAX_GROUP + 2)  # 1, MAX_GROUP, 1
    finally:
        blocker.done.set()
        writer.close()


async def test_writes_that_sync_nothing_go_to_the_writer_when_told(book: Any) -> None:
    """``inline=False`` on a local file: a charge runs on the writer's thread too."""
    writer = LedgerWriter(book, inline=False)
    threads: list[str] = []

    def sign(receipt: Any) -> Any:
        threads.append(threading.current_thread().name)
        return NODE.sign(receipt)
    try:
        assert not writer.inline
        hold = await writer.accept_voucher("r1", cid(1), MAX, "0x", MAX)
        await writer.commit(hold, 1, 1, 10, sign, CHAIN)
        assert threads == ["agoranet-ledger-writer"]
    finally:
        writer.close()


def test_a_write_answered_after_its_event_loop_closed_does_not_stop_the_writer(
        book: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agoranet.payments.accept.ledger_writer")
    writer = LedgerWriter(book, inline=False)
    blocker = Blocker()

    async def leave_a_write_behind() -> None:
        asyncio.get_running_loop().create_task(writer.call(blocker))
        await asyncio.to_thread(blocker.running.wait, BOUND)
    try:
        asyncio.run(leave_a_write_behind())  # its loop closes with the write unanswered
        blocker.done.set()
        hold = asyncio.run(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX))
        assert hold.request_id == "r1"  # written after the lost answer: the writer goes on
        assert "ledger write answered after its event loop closed" in caplog.messages
    finally:
        blocker.done.set()
        writer.close()
