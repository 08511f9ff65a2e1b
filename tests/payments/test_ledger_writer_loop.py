"""A local file's vouchers written on the event loop, their syncs started there
(payments/accept/ledger_writer.py, payments/accept/sqlite_group.py, file_sync.py).

On a SQLite group-commit ledger (``inline``, the default for a local file) a voucher's
write runs on the caller's thread at once and its sync is asked of the kernel from the
event loop (no thread to wake), so the request goes on while the disk flushes. The rules
hold as on the writer's threads (test_ledger_writer_rules.py): the caller is answered only
once the sync made the voucher durable; vouchers written while a sync runs share the next
one; a refusal is told at once and starts no sync; a failed sync fails and releases the
voucher and says so; a caller that gave up meanwhile leaves nothing held; without kernel
AIO a thread makes the sync; closing the writer lets a sync under way finish first.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from agoranet.errors import LedgerError
from agoranet.file_sync import FileSyncs
from agoranet.payments.accept.ledger import Hold, VoucherRefused
from agoranet.payments.accept.ledger_writer import LedgerWriter
from agoranet.payments.accept.sqlite_group import SqliteGroupLedger

from .test_ledger_writer import CHAIN, MAX, NODE, cid, until

pytestmark = pytest.mark.timeout(30)
BOUND = 20  # seconds: what a write the test waits for may take at most, on a loaded machine


@pytest.fixture
def book(tmp_path: Path) -> Any:
    ledger = SqliteGroupLedger(tmp_path / "ledger.sqlite")
    for n in range(1, 4):
        ledger.ensure_channel(cid(n), "{}", NODE.address, 0)
    yield ledger
    ledger.close()


class LoopGate:
    """Holds the ledger's syncs started from the loop until opened; counts them."""

    def __init__(self, ledger: Any) -> None:
        self.open = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls = 0
        self.fail: BaseException | None = None
        self._started = ledger.sync_started
        ledger.sync_started = self

    def __call__(self, syncs: FileSyncs) -> Awaitable[None]:
        self.calls += 1
        self.entered.set()
        return self._held(syncs)

    async def _held(self, syncs: FileSyncs) -> None:
        await asyncio.wait_for(self.open.wait(), BOUND)
        if self.fail is not None:
            raise self.fail
        await self._started(syncs)


async def test_a_voucher_is_written_here_and_answered_once_its_sync_is_done(
        book: Any) -> None:
    gate = LoopGate(book)
    threads: list[str] = []
    accept = book.accept_voucher

    def recorded(*args: Any) -> Hold:
        threads.append(threading.current_thread().name)
        return accept(*args)  # type: ignore[no-any-return]
    book.accept_voucher = recorded
    writer = LedgerWriter(book)
    try:
        assert writer.inline
        task = asyncio.create_task(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX))
        await asyncio.wait_for(gate.entered.wait(), BOUND)
        # written on this thread, visible to a reader, its sync under way: not answered
        assert threads == [threading.current_thread().name]
        assert book.channel(cid(1)).pending_request == "r1"
        await asyncio.sleep(0.05)
        assert not task.done() and writer.syncs == 0
        gate.open.set()
        hold = await asyncio.wait_for(task, BOUND)
        assert hold == Hold("r1", cid(1), MAX, MAX, 0)
        assert gate.calls == 1 and writer.syncs == 1
        assert writer._thread is None  # no thread was needed
        receipt = await writer.commit(hold, 3, 4, 250, NODE.sign, CHAIN)  # owes no sync
        assert receipt.cumulative == 250 and gate.calls == 1
    finally:
        gate.open.set()
        writer.close()


async def test_vouchers_written_while_a_sync_runs_share_the_next_one(book: Any) -> None:
    gate = LoopGate(book)
    writer = LedgerWriter(book)
    try:
        first = asyncio.create_task(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX))
        await asyncio.wait_for(gate.entered.wait(), BOUND)
        later = [asyncio.create_task(writer.accept_voucher(f"r{n}", cid(n), MAX, "0x", MAX))
                 for n in (2, 3)]
        await until(lambda: all(book.channel(cid(n)).pending_request == f"r{n}"
                                for n in (2, 3)))
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in (first, *later)) and gate.calls == 1
        gate.open.set()
        holds = await asyncio.wait_for(asyncio.gather(first, *later), BOUND)
        assert [h.request_id for h in holds] == ["r1", "r2", "r3"]
        assert gate.calls == 2 and writer.syncs == 2  # r1's, then one for r2 and r3
        assert (writer.groups, writer.writes) == (3, 3)
    finally:
        gate.open.set()
        writer.close()


async def test_a_refused_voucher_is_told_at_once_and_starts_no_sync(book: Any) -> None:
    gate = LoopGate(book)
    gate.open.set()
    writer = LedgerWriter(book)
    try:
        await asyncio.wait_for(writer.accept_voucher("first", cid(1), MAX, "0x", MAX), BOUND)
        with pytest.raises(VoucherRefused) as refused:  # the channel is busy with "first"
            await writer.accept_voucher("second", cid(1), MAX, "0x", MAX)
        assert refused.value.reason == "busy"
        assert gate.calls == 1 and writer.syncs == 1  # the first voucher's only
        assert book.channel(cid(1)).pending_request == "first"
    finally:
        writer.close()


@pytest.mark.parametrize("failure", [OSError(5, "disk gone"),
                                     LedgerError("the ledger is full")])
async def test_a_failed_sync_fails_and_releases_the_voucher(
        failure: BaseException, book: Any, caplog: pytest.LogCaptureFixture) -> None:
    gate = LoopGate(book)
    gate.fail = failure
    gate.open.set()
    writer = LedgerWriter(book)
    try:
        with pytest.raises(LedgerError) as failed:
            await asyncio.wait_for(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX),
                                   BOUND)
        if isinstance(failure, LedgerError):
            assert failed.value is failure
        else:
            assert str(failed.value) == "ledger sync failed: [Errno 5] disk gone"
        channel = book.channel(cid(1))
        assert channel.pending_request is None and channel.voucher_amount == 0
        assert f"ledger group sync failed: {failure}" in caplog.messages
        assert writer.syncs == 0
        gate.fail = None  # the channel takes the next voucher
        hold = await asyncio.wait_for(writer.accept_voucher("r2", cid(1), MAX, "0x", MAX),
                                      BOUND)
        assert hold.request_id == "r2" and hold.charged_before == 0 and writer.syncs == 1
    finally:
        writer.close()


async def test_a_flush_the_kernel_fails_is_a_failed_sync(
        book: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real ledger and FileSyncs: the log's flush fails (its descriptor is
    not open any more when the kernel gets it): the voucher fails, released."""
    flush = FileSyncs.flush

    def bad_descriptor(self: FileSyncs, fd: int, data_only: bool = True) -> Any:
        return flush(self, 10_000 + fd, data_only)
    monkeypatch.setattr(FileSyncs, "flush", bad_descriptor)
    writer = LedgerWriter(book)
    try:
        with pytest.raises(LedgerError, match=r"cannot sync the ledger's log .*Bad file"):
            await asyncio.wait_for(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX),
                                   BOUND)
        assert book.channel(cid(1)).pending_request is None
    finally:
        writer.close()


async def test_a_caller_that_gave_up_during_the_sync_leaves_nothing_held(book: Any) -> None:
    gate = LoopGate(book)
    writer = LedgerWriter(book)
    try:
        task = asyncio.create_task(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX))
        await asyncio.wait_for(gate.entered.wait(), BOUND)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert book.channel(cid(1)).pending_request == "r1"  # held until synced
        gate.open.set()
        await asyncio.wait_for(until(lambda: book.channel(cid(1)).pending_request is None),
                               BOUND)
        hold = await asyncio.wait_for(writer.accept_voucher("r2", cid(1), MAX, "0x", MAX),
                                      BOUND)
        assert hold.charged_before == 0 and book.channel(cid(1)).voucher_amount == MAX
    finally:
        gate.open.set()
        writer.close()


async def test_without_kernel_aio_a_thread_makes_the_sync(
        book: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FileSyncs, "open", classmethod(lambda cls: None))
    threads: list[str] = []
    sync = book.sync

    def recorded() -> None:
        threads.append(threading.current_thread().name)
        sync()
    book.sync = recorded
    writer = LedgerWriter(book)
    try:
        hold = await asyncio.wait_for(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX),
                                      BOUND)
        assert hold.request_id == "r1" and writer.syncs == 1
        assert len(threads) == 1 and threads[0] != threading.current_thread().name
    finally:
        writer.close()


async def test_closing_the_writer_lets_a_sync_under_way_finish(book: Any) -> None:
    writer = LedgerWriter(book)
    try:
        await writer.accept_voucher("r1", cid(1), MAX, "0x", MAX)  # the syncs are set up
        task = asyncio.create_task(writer.accept_voucher("r2", cid(2), MAX, "0x", MAX))
        await asyncio.sleep(0)  # written, its flush asked of the kernel
        assert writer._flushing is not None
        writer.close()  # waits for the kernel's flush
        hold = await asyncio.wait_for(task, BOUND)
        assert hold.request_id == "r2" and writer.syncs == 2
    finally:
        writer.close()


async def test_a_closed_writer_writes_no_voucher(book: Any) -> None:
    writer = LedgerWriter(book)
    writer.close()
    with pytest.raises(LedgerError, match="the ledger writer is closed"):
        await writer.accept_voucher("r1", cid(1), MAX, "0x", MAX)
    assert book.channel(cid(1)).pending_request is None


