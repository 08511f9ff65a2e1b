"""The ledger writer (payments/accept/ledger_writer.py): writes off the event loop, group commit.

Against SQLite and PostgreSQL (the group-commit ledgers, payments/accept/sqlite_group.py and
payments/accept/pg_group.py): a voucher's caller is answered only after the sync that makes it
durable (and a killed process finds it on disk), many vouchers share one sync, a failed
sync fails (and releases) what it should have made durable, and concurrent paid requests
keep every money rule: one request per channel at a time, charged = receipted, claimed
<= receipted. A test that holds the ledger's sync (Gate) writes vouchers on the writer's
threads (``inline=False``); a local file's own path, vouchers written and syncs started on
the event loop, is test_ledger_writer_loop.py's (the tests here that hold nothing run it).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agoranet.errors import LedgerError
from agoranet.payments.accept.group_commit import GroupCommitLedger
from agoranet.payments.accept.ledger import Hold, VoucherRefused
from agoranet.payments.accept.ledger_writer import LedgerWriter
from agoranet.payments.accept.sqlite_group import SqliteGroupLedger
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.receipts import ReceiptSigner

from .ledgers import BACKENDS, LEASE_S, fresh_database

pytestmark = pytest.mark.timeout(60)  # each takes a second or two (a server start aside)

NODE = ReceiptSigner(bytes(Account.create().key))
CHAIN = 31337
MAX = 1_000


def cid(n: int) -> str:
    return "0x" + f"{n:064x}"


class Book:
    """A group-commit ledger on a fresh store, and how to open another one on it."""

    def __init__(self, backend: str, where: str) -> None:
        self.backend, self.where = backend, where
        self.opened: list[Any] = []

    def open(self) -> Any:
        if self.backend == "sqlite":
            book: Any = SqliteGroupLedger(self.where)
        else:
            from agoranet.payments.accept.pg_group import PgGroupLedger

            book = PgGroupLedger(self.where, lease_s=LEASE_S)
        self.opened.append(book)
        return book


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Book]:
    if request.param == "sqlite":
        book = Book("sqlite", str(tmp_path / "ledger.sqlite"))
    else:
        book = Book("postgresql", fresh_database(request.getfixturevalue("pg_server")))
    try:
        yield book
    finally:
        for opened in book.opened:
            opened.close()


class Gate:
    """Wraps a ledger's sync: each call waits for the gate to open, and is counted."""

    def __init__(self, ledger: Any) -> None:
        self.open = threading.Event()
        self.calls = 0
        self.threads: list[str] = []
        self.entered = threading.Event()
        self._sync: Callable[[], None] = ledger.sync
        self.fail: BaseException | None = None
        ledger.sync = self

    def __call__(self) -> None:
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.open.wait(20), "the test never opened the gate"
        if self.fail is not None:
            raise self.fail
        self._sync()


async def until(check: Callable[[], bool]) -> None:
    """Yield to the loop until ``check()`` (bounded by the test's timeout)."""
    while not check():
        await asyncio.sleep(0.005)


def test_group_ledgers_are_group_commit_ledgers(tmp_path: Path) -> None:
    book = SqliteGroupLedger(tmp_path / "l.sqlite")
    plain = SqliteLedger(tmp_path / "p.sqlite")
    try:
        assert isinstance(book, GroupCommitLedger)
        assert not isinstance(plain, GroupCommitLedger)
        assert LedgerWriter(book).groups_commit and not LedgerWriter(plain).groups_commit
    finally:
        book.close()
        plain.close()


async def test_the_voucher_is_synced_before_its_caller_is_answered(store: Book) -> None:
    book = store.open()
    gate = Gate(book)
    writer = LedgerWriter(book, inline=False)  # its threads
    try:
        book.ensure_channel(cid(1), "{}", NODE.address, 0)
        accept = asyncio.create_task(writer.accept_voucher("r1", cid(1), MAX, "0xsig", MAX))
        await asyncio.to_thread(gate.entered.wait, 20)
        # committed (another connection sees the hold) but not yet synced: not answered
        assert book.channel(cid(1)).pending_request == "r1"
        await asyncio.sleep(0.05)
        assert not accept.done()
        gate.open.set()
        hold = await accept
        assert hold == Hold("r1", cid(1), MAX, MAX, 0)
        assert gate.calls == 1 and writer.syncs == 1
        # a charge owes no sync: answered without one
        receipt = await writer.commit(hold, 3, 4, 250, NODE.sign, CHAIN)
        assert receipt.cumulative == 250 and gate.calls == 1
    finally:
        gate.open.set()
        writer.close()


async def test_many_vouchers_share_one_sync(store: Book) -> None:
    book = store.open()
    gate = Gate(book)
    writer = LedgerWriter(book, inline=False)  # its threads
    try:
        for n in range(8):
            book.ensure_channel(cid(n), "{}", NODE.address, 0)
        first = asyncio.create_task(writer.accept_voucher("r0", cid(0), MAX, "0x", MAX))
        await asyncio.to_thread(gate.entered.wait, 20)  # the first sync is under way
        rest = [asyncio.create_task(writer.accept_voucher(f"r{n}", cid(n), MAX, "0x", MAX))
                for n in range(1, 8)]
        await asyncio.sleep(0)  # each has queued its write
        assert not any(task.done() for task in [first, *rest])
        gate.open.set()
        holds = await asyncio.gather(first, *rest)
        assert [h.request_id for h in holds] == [f"r{n}" for n in range(8)]
        assert gate.calls == 2  # the first voucher's sync, then one for the seven others
    finally:
        gate.open.set()
        writer.close()


async def test_with_writes_waiting_the_sync_runs_beside_the_writer(store: Book) -> None:
    """A group whose writes owe a sync, with more writes queued behind it: the sync runs
    on the sync thread while the writer goes on (a charge is answered meanwhile)."""
    book = store.open()
    gate = Gate(book)
    writer = LedgerWriter(book, inline=False)  # its threads
    first, second = Blocker(), Blocker()
    try:
        for n in (1, 2):
            book.ensure_channel(cid(n), "{}", NODE.address, 0)
        held = book.accept_voucher("old", cid(2), MAX, "0x", MAX)
        busy = asyncio.create_task(writer.call(first))
        await asyncio.to_thread(first.running.wait, 20)  # the writer is held up
        accept = asyncio.create_task(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX))
        busy_again = asyncio.create_task(writer.call(second))  # same group as the voucher
        await asyncio.sleep(0)
        first.done.set()
        await busy
        await asyncio.to_thread(second.running.wait, 20)  # the group's second write runs
        charge = asyncio.create_task(writer.call(
            lambda: book.commit(held, 1, 1, 100, NODE.sign, CHAIN)))
        await asyncio.sleep(0)  # queued behind the group: its sync is handed off
        second.done.set()
        await busy_again
        assert (await charge).cumulative == 100  # answered while the sync waits
        await asyncio.to_thread(gate.entered.wait, 20)
        assert not accept.done()
        gate.open.set()
        assert (await accept).request_id == "r1"
        assert gate.threads == ["agoranet-ledger-writer-sync"]
    finally:
        gate.open.set()
        first.done.set()
        second.done.set()
        writer.close()


class Blocker:
    """A write that keeps the writer busy until the test lets it go."""

    def __init__(self) -> None:
        self.running, self.done = threading.Event(), threading.Event()

    def __call__(self) -> None:
        self.running.set()
        assert self.done.wait(20)


async def test_a_failed_sync_fails_and_releases_the_vouchers_it_owed(store: Book) -> None:
    book = store.open()
    gate = Gate(book)
    writer = LedgerWriter(book, inline=False)  # its threads
    try:
        book.ensure_channel(cid(1), "{}", NODE.address, 0)
        book.ensure_channel(cid(2), "{}", NODE.address, 0)
        held = book.accept_voucher("old", cid(2), MAX, "0x", MAX)  # synced on its own
        gate.fail = OSError("disk gone")
        accept = asyncio.create_task(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX))
        await asyncio.to_thread(gate.entered.wait, 20)
        gate.open.set()
        with pytest.raises(LedgerError):
            await accept
        channel = book.channel(cid(1))
        assert channel.pending_request is None and channel.voucher_amount == 0
        gate.fail = None
        charge = await writer.commit(held, 1, 1, 100, NODE.sign, CHAIN)  # owes no sync
        assert charge.cumulative == 100 and gate.calls == 1
        hold = await writer.accept_voucher("r2", cid(1), MAX, "0x", MAX)  # usable again
        assert hold.charged_before == 0
    finally:
        gate.open.set()
        writer.close()


async def test_a_voucher_whose_caller_gave_up_is_released(store: Book) -> None:
    book = store.open()
    gate = Gate(book)
    writer = LedgerWriter(book, inline=False)  # its threads
    try:
        book.ensure_channel(cid(1), "{}", NODE.address, 0)
        accept = asyncio.create_task(writer.accept_voucher("r1", cid(1), MAX, "0x", MAX))
        await asyncio.to_thread(gate.entered.wait, 20)
        accept.cancel()
        gate.open.set()
        with pytest.raises(asyncio.CancelledError):
            await accept
        await until(lambda: book.channel(cid(1)).pending_request is None)
        assert book.channel(cid(1)).voucher_amount == 0  # the previous voucher is back
        assert (await writer.accept_voucher("r2", cid(1), MAX, "0x", MAX)).request_id == "r2"
    finally:
        gate.open.set()
        writer.close()


async def test_writes_that_sync_nothing_run_inline_on_a_local_file(store: Book) -> None:
    """A charge, a running receipt, a release: on the caller's thread for SQLite (a write to
    the OS, no sync), on the writer's for PostgreSQL (network round trips)."""
    book = store.open()
    writer = LedgerWriter(book)
    threads: list[str] = []

    def sign(receipt: Any) -> Any:
        threads.append(threading.current_thread().name)
        return NODE.sign(receipt)

    try:
        assert writer.inline == (store.backend == "sqlite")
        hold = await writer.accept_voucher("r1", cid(3), MAX, "0x", MAX,
                                           channel=("{}", NODE.address, 0))
        await writer.progress(hold, 1, 1, 10, sign, CHAIN)
        await writer.commit(hold, 1, 2, 20, sign, CHAIN)
        expected = threading.current_thread().name if writer.inline else "agoranet-ledger-writer"
        assert threads == [expected, expected]
    finally:
        writer.close()


async def test_refusals_and_errors_reach_the_caller(store: Book) -> None:
    book = store.open()
    writer = LedgerWriter(book)
    try:
        with pytest.raises(VoucherRefused) as refused:
            await writer.accept_voucher("r1", cid(9), MAX, "0x", MAX)
        assert refused.value.reason == "unknown-channel"
        hold = await writer.accept_voucher("r1", cid(9), MAX, "0x", MAX,
                                           channel=("{}", NODE.address, 0))
        with pytest.raises(VoucherRefused) as busy:
            await writer.accept_voucher("r2", cid(9), 2 * MAX, "0x", MAX)
        assert busy.value.reason == "busy"
        running = await writer.progress(hold, 1, 16, 40, NODE.sign, CHAIN)
        assert await writer.release(hold) == running
        with pytest.raises(LedgerError):  # holds nothing
            await writer.commit(Hold("none", cid(9), MAX, MAX, 0), 1, 1, 1, NODE.sign, CHAIN)
    finally:
        writer.close()
    with pytest.raises(LedgerError):
        await writer.release(hold)  # closed


async def test_concurrent_paid_requests_keep_the_money_rules(store: Book) -> None:
    """Five channels, each with a stream of requests, and on a sixth many requests at
    once; every request holds, then is charged or released, all through one writer."""
    book = store.open()
    writer = LedgerWriter(book)
    channels = [cid(n) for n in range(6)]
    for channel in channels:
        book.ensure_channel(channel, "{}", NODE.address, 0)
    served: dict[str, int] = dict.fromkeys(channels, 0)

    async def customer(channel: str, requests: int) -> None:
        charged = 0
        for i in range(requests):
            hold = await writer.accept_voucher(f"{channel}-{i}", channel, charged + MAX,
                                               "0x", MAX)
            if i % 3 == 2:
                await writer.progress(hold, 1, 16, 10 + i, NODE.sign, CHAIN)
                kept = await writer.release(hold)  # a stream cut: its running receipt
                assert kept is not None
                charged = kept.cumulative
            else:
                charged = (await writer.commit(hold, 1, 1, 7 * i + 1, NODE.sign,
                                               CHAIN)).cumulative
            served[channel] += 1

    async def crowd(channel: str, requests: int) -> None:
        """``requests`` at once on one channel, each retrying while the channel is busy."""
        async def one(i: int) -> None:
            while True:
                current = book.channel(channel)
                try:
                    hold = await writer.accept_voucher(f"crowd-{i}", channel,
                                                       current.charged + MAX, "0x", MAX)
                except VoucherRefused as exc:
                    assert exc.reason in ("busy", "mismatch")
                    await asyncio.sleep(0)
                    continue
                assert book.channel(channel).pending_request == f"crowd-{i}"  # alone on it
                await asyncio.sleep(0)  # the others try meanwhile
                await writer.commit(hold, 1, 1, 5, NODE.sign, CHAIN)
                served[channel] += 1
                return

        await asyncio.gather(*(one(i) for i in range(requests)))

    try:
        await asyncio.gather(*(customer(c, 12) for c in channels[:5]), crowd(channels[5], 12))
    finally:
        writer.close()
    assert all(count == 12 for count in served.values())
    for channel in channels:
        record = book.channel(channel)
        receipts = book.receipts(channel)
        assert record.pending_request is None
        assert record.charged == sum(r.amount for r in receipts)  # every charge receipted
        assert [r.cumulative for r in receipts] == sorted({r.cumulative for r in receipts})
        assert record.claimed <= record.charged
        assert len(receipts) == 12
    assert writer.writes >= 6 * 12 * 2


_KILLED_AFTER_ACCEPT = """
import asyncio, os, signal, sys
from agoranet.payments.accept.ledger_writer import LedgerWriter
backend, where = sys.argv[1], sys.argv[2]
if backend == "sqlite":
    from agoranet.payments.accept.sqlite_group import SqliteGroupLedger as Book
    book = Book(where)
else:
    from agoranet.payments.accept.pg_group import PgGroupLedger as Book
    book = Book(where, lease_s=2.0)

async def main():
    writer = LedgerWriter(book)
    await writer.accept_voucher("paid", "0x" + "0" * 63 + "1", 1000, "0xsig", 1000,
                                channel=("{}", "0xpayer", 0))
    os.kill(os.getpid(), signal.SIGKILL)  # the moment inference would start

asyncio.run(main())
"""


def test_a_voucher_accepted_survives_a_kill_right_after(store: Book) -> None:
    done = subprocess.run([sys.executable, "-c", _KILLED_AFTER_ACCEPT, store.backend,
                           store.where], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    if store.backend == "postgresql":  # let the killed replica's lease run out
        import psycopg

        with psycopg.connect(store.where, autocommit=True) as conn:
            conn.execute("UPDATE replicas SET expires_at = 0")
    book = store.open()
    channel = book.channel(cid(1))
    assert channel is not None and channel.voucher_amount == 1000
    assert channel.voucher_signature == "0xsig" and channel.pending_request == "paid"
    assert book.recover() == 1  # the restarted node releases it (nothing was charged)
    assert book.channel(cid(1)).pending_request is None
