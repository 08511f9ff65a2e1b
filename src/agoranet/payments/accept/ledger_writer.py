"""The node's request-path ledger writes, off the event loop, with group commit.

:class:`LedgerWriter` runs a :class:`~agoranet.payments.accept.ledger.Ledger`'s writes
on one writer thread and gives the event loop ``async`` methods that await
them: a request waiting for its voucher to reach the disk no longer stops every
other request on the loop.

The writer runs the queued writes one after the other, each still its own
transaction, so every per-channel rule -- one request per channel at a time,
the compare-and-set of a voucher -- is the ledger's, unchanged. If the ledger
supports group commit (:class:`~agoranet.payments.accept.group_commit.GroupCommitLedger`)
the writes that would have synced (an accepted voucher) defer it: with nothing
else queued the writer syncs them at once (one sync for all), else a second
thread does, making every such write committed since its last sync durable with
one sync while the writer goes on writing; their callers are answered after it.
A write that owes no sync (a charge, a running receipt, a release) is answered at
once; on a SQLite ledger it runs on the caller's thread (:meth:`LedgerWriter.unsynced`):
its commit only writes to the operating system (the ledger's checkpoints, which
sync, run on a thread of their own), which costs less than the two thread
hand-offs that would move it. So does an accepted voucher's write
(:meth:`LedgerWriter.accept_voucher`), and its sync is started from the event loop
too, asked of the kernel with no thread to wake
(:class:`~agoranet.file_sync.FileSyncs`): its request goes on (tokenising) while the
disk flushes, and vouchers written meanwhile share the next sync. Each caller is
answered only once its own write is as durable as the ledger alone would have made
it: an accepted voucher is on disk before :meth:`LedgerWriter.accept_voucher`
returns, so before any inference it pays for. A lone request waits for one sync, as
before; concurrent ones share one, and the writer goes on writing while it runs.

If the group's sync fails, every write in it that owed one fails with
:class:`~agoranet.errors.LedgerError` (a voucher accepted in it is released
again, best effort). A voucher whose caller was cancelled while it was being
accepted is released once it has been (it paid for nothing).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from agoranet.errors import LedgerError
from agoranet.file_sync import FileSyncs
from agoranet.payments.accept.group_commit import FileGroupCommitLedger, GroupCommitLedger
from agoranet.payments.accept.ledger import ChannelRecord, Hold, Ledger, VoucherRefused
from agoranet.payments.receipts import Receipt
from agoranet.sqlite_store import SqliteStore

__all__ = ["MAX_CHANNELS_SEEN", "MAX_GROUP", "LedgerWriter"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
MAX_GROUP: Final = 256  # writes in one group at most (bounds the first caller's wait)
MAX_CHANNELS_SEEN: Final = 100_000  # channels remembered as known to the ledger at most


@dataclass(eq=False)
class _Job:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = None
    owed: bool = False  # deferred a sync the group must make


class LedgerWriter:
    """``async`` writes to ``ledger`` on one writer thread, synced as groups."""

    def __init__(self, ledger: Ledger, *, inline: bool | None = None,
                 name: str = "agoranet-ledger-writer") -> None:
        self.ledger = ledger
        # Writes that sync nothing run on the caller's thread (default: for a SQLite file):
        # a commit there is a write to the OS, cheaper than two thread hand-offs.
        self.inline = isinstance(ledger, SqliteStore) if inline is None else inline
        self._group: GroupCommitLedger | None = (
            ledger if isinstance(ledger, GroupCommitLedger) else None)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._synced: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._name = name
        self._thread: threading.Thread | None = None
        self._sync_thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self._channels: set[str] = set()  # ledger rows known to exist (accepting thread)
        # A local file's vouchers: written on the event loop, their syncs started there.
        self._here: FileGroupCommitLedger | None = (
            ledger if self.inline and isinstance(ledger, FileGroupCommitLedger) else None)
        self._file_syncs: FileSyncs | None = None
        self._owed_here: list[_Job] = []  # written here, owing a sync not started yet
        self._flushing: asyncio.Future[None] | None = None  # the sync started here
        self.groups = 0  # groups written (each one sync at most)
        self.writes = 0  # writes in them
        self.syncs = 0  # group syncs made

    @property
    def groups_commit(self) -> bool:
        """Whether the ledger's durable writes are synced as groups (else one by one)."""
        return self._group is not None

    # ------------------------------------------------------------ the ledger's writes

    async def ensure_channel(self, channel_id: str, config: str, payer: str,
                             baseline: int) -> ChannelRecord:
        return await self.call(lambda: self.ledger.ensure_channel(channel_id, config, payer,
                                                                  baseline))

    async def accept_voucher(self, request_id: str, channel_id: str, voucher_amount: int,
                             signature: str, max_amount: int, *,
                             channel: tuple[str, str, int] | None = None) -> Hold:
        """The ledger's :meth:`~Ledger.accept_voucher`; the voucher is durable on return.

        On a local file (:attr:`inline`) the voucher is written on the caller's thread and
        its sync started there (:meth:`_write_here`); else on the writer thread.

        With ``channel`` (``config, payer, baseline``) the channel is first created if the
        ledger does not know it (:meth:`~Ledger.ensure_channel`), in the same write. A
        channel this writer has accepted a voucher on is not looked up again (rows are
        never deleted; if the ledger says it does not know the channel after all, it is
        created and the voucher accepted once more)."""
        key = channel_id.lower()

        def accept() -> Hold:
            seen = key in self._channels
            if channel is not None and not seen:
                self.ledger.ensure_channel(channel_id, *channel)
            try:
                hold = self.ledger.accept_voucher(request_id, channel_id, voucher_amount,
                                                  signature, max_amount)
            except VoucherRefused as exc:
                if channel is None or not seen or exc.reason != "unknown-channel":
                    raise
                self._channels.discard(key)
                self.ledger.ensure_channel(channel_id, *channel)
                hold = self.ledger.accept_voucher(request_id, channel_id, voucher_amount,
                                                  signature, max_amount)
            if len(self._channels) >= MAX_CHANNELS_SEEN:
                self._channels.clear()
            self._channels.add(key)
            return hold

        future = self._submit(accept) if self._here is None else self._write_here(accept)
        try:
            hold: Hold = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._release_orphan)
            raise
        return hold

    async def commit(self, hold: Hold, tokens_in: int, tokens_out: int, amount: int,
                     sign: Callable[[Receipt], Receipt], chain_id: int) -> Receipt:
        return await self.unsynced(lambda: self.ledger.commit(hold, tokens_in, tokens_out,
                                                              amount, sign, chain_id))

    async def progress(self, hold: Hold, tokens_in: int, tokens_out: int, amount: int,
                       sign: Callable[[Receipt], Receipt], chain_id: int) -> Receipt:
        return await self.unsynced(lambda: self.ledger.progress(hold, tokens_in, tokens_out,
                                                                amount, sign, chain_id))

    async def release(self, hold: Hold) -> Receipt | None:
        return await self.unsynced(lambda: self.ledger.release(hold))

    async def call(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` (a write to the ledger) on the writer thread, durable on return."""
        result: _T = await self._submit(fn)
        return result

    async def unsynced(self, fn: Callable[[], _T]) -> _T:
        """``fn()``, a write that syncs nothing (a charge, a running receipt, a release):
        on the caller's thread if the ledger is a local file (:attr:`inline`), else as
        :meth:`call`."""
        if not self.inline:
            return await self.call(fn)
        if self._closed:
            raise LedgerError("the ledger writer is closed")
        return fn()

    # ------------------------------------------------------------ written here

    def _write_here(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """``fn()``, a write that may owe a sync, on the caller's thread now (a commit to a
        local file is a write to the operating system), its sync started from the event
        loop at once, with no thread to wake (:meth:`FileGroupCommitLedger.sync_started`):
        a future answered once that sync made it durable (at once if it owed none). The
        request goes on (tokenising) while the disk flushes; writes made while a sync
        runs share the next one."""
        if self._closed:
            raise LedgerError("the ledger writer is closed")
        assert self._here is not None
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop, loop.create_future())
        with self._here.deferral.deferring():
            _run_job(job)
            job.owed = self._here.deferral.take_owed()
        self.groups += 1
        self.writes += 1
        if not job.owed:
            _answer(job)
            return job.future
        self._owed_here.append(job)  # (a refusal after a write that owed one: once synced)
        if self._flushing is None or self._flushing.done():  # (done: its loop stopped it)
            self._start_flush()
        return job.future

    def _start_flush(self) -> None:
        """Start one sync for the writes made here that owe one; answer them after it."""
        assert self._here is not None
        jobs, self._owed_here = self._owed_here, []
        if self._file_syncs is None:
            self._file_syncs = FileSyncs.open()
        started: Awaitable[None]
        if self._file_syncs is None:  # no kernel AIO here: a thread makes it
            started = asyncio.to_thread(self._here.sync)
        else:
            started = self._here.sync_started(self._file_syncs)
        self._flushing = asyncio.ensure_future(self._end_flush(jobs, started))

    async def _end_flush(self, jobs: list[_Job], started: Awaitable[None]) -> None:
        try:
            await started
            self.syncs += 1
        except Exception as exc:  # not durable: none is answered "done"
            self._failed(jobs, exc)
        for job in jobs:
            _answer(job)
        self._flushing = None
        if self._owed_here:
            self._start_flush()

    # ------------------------------------------------------------ the writer thread

    def _submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        if self._closed:
            raise LedgerError("the ledger writer is closed")
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop, loop.create_future())
        self._ensure_thread()
        self._queue.put(job)
        return job.future

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                if self._group is not None:
                    self._sync_thread = threading.Thread(
                        target=self._run_syncs, name=f"{self._name}-sync", daemon=True)
                    self._sync_thread.start()
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._synced.put(None)
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
            self._write_group(group)
            if stop:
                self._synced.put(None)
                return

    def _write_group(self, group: list[_Job]) -> None:
        owed: list[_Job] = []
        if self._group is None:
            for job in group:
                _run_job(job)
        else:
            with self._group.deferral.deferring():
                for job in group:
                    _run_job(job)
                    job.owed = self._group.deferral.take_owed()
            owed = [job for job in group if job.owed]
        self.groups += 1
        self.writes += len(group)
        _answer_all(job for job in group if not job.owed)  # as durable as they will be
        if not owed:
            return
        if self._queue.empty():  # nothing else to write meanwhile: sync here, no hand-off
            self._sync(owed)
            _answer_all(owed)
        else:  # answered once synced, while the next writes go on
            self._synced.put(owed)

    def _run_syncs(self) -> None:
        """The sync thread: one sync for every group written since the last one."""
        while True:
            first = self._synced.get()
            if first is None:
                return
            jobs, stop = list(first), False
            while True:
                try:
                    more = self._synced.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.extend(more)
            self._sync(jobs)
            _answer_all(jobs)
            if stop:
                return

    def _sync(self, jobs: list[_Job]) -> None:
        assert self._group is not None
        try:
            self._group.sync()
            self.syncs += 1
        except BaseException as exc:  # the owed writes are not durable: none is answered "done"
            self._failed(jobs, exc)

    def _failed(self, jobs: list[_Job], exc: BaseException) -> None:
        """The sync ``jobs`` owed failed: each fails with the ledger's error (or one that
        names the cause), and a voucher it accepted is released."""
        error = exc if isinstance(exc, LedgerError) else LedgerError(
            f"ledger sync failed: {exc}")
        logger.error("ledger group sync failed: %s", exc)
        for job in jobs:
            if job.error is None:
                if isinstance(job.result, Hold):
                    self._release_quietly(job.result)
                job.result, job.error = None, error

    def _release_quietly(self, hold: Hold) -> None:
        try:
            self.ledger.release(hold)
        except Exception as exc:  # the next restart's recover() releases it
            logger.warning("could not release %s after a failed sync: %s", hold.request_id, exc)

    def _release_orphan(self, future: asyncio.Future[Any]) -> None:
        """A voucher accepted for a caller that was cancelled meanwhile: give it up."""
        if future.cancelled() or future.exception() is not None or self._closed:
            return
        hold = future.result()
        if isinstance(hold, Hold):
            loop = future.get_loop()
            released = loop.create_future()
            released.add_done_callback(_retrieve)
            self._ensure_thread()  # (a voucher written on the loop started none)
            self._queue.put(_Job(lambda: self.ledger.release(hold), loop, released))

    def close(self) -> None:
        """Finish the queued writes and stop the thread (the ledger stays open)."""
        with self._start_lock:
            self._closed = True
            thread, syncs = self._thread, self._sync_thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
        if syncs is not None:
            syncs.join()
        if self._file_syncs is not None:  # the syncs started from the loop end first
            self._file_syncs.close()


def _run_job(job: _Job) -> None:
    try:
        job.result = job.fn()
    except BaseException as exc:  # the caller gets it, as from a direct call
        job.error = exc


def _answer_all(jobs: Iterable[_Job]) -> None:
    for job in jobs:
        try:
            job.loop.call_soon_threadsafe(_answer, job)
        except RuntimeError:  # its event loop is closed: nobody waits for the answer
            logger.debug("ledger write answered after its event loop closed")


def _answer(job: _Job) -> None:
    if job.future.done() or job.loop.is_closed():  # cancelled meanwhile, or nobody waits
        return
    if job.error is not None:
        job.future.set_exception(job.error)
    else:
        job.future.set_result(job.result)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Nobody awaits ``future``: log its error rather than leave it unretrieved."""
    if not future.cancelled() and future.exception() is not None:
        logger.warning("releasing an abandoned voucher failed: %s", future.exception())
