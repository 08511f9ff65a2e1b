"""The gateway's stores never hold the event loop for a write (issue #16 item 5).

Each store's connection is wrapped so that its writes wait for a gate that only a
coroutine on the loop opens: a write made on the loop's thread would wait for it
forever (bounded here: it gives up and says so), one made on a writer thread lets the
loop run the coroutine that opens it. Durability is checked through a fresh connection:
an awaited write is in the file when the await returns; a fire-and-forget one once the
store is flushed or closed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from agoranet.gateway.budget import Budget
from agoranet.gateway.keyaccess import KeyedBudget
from agoranet.gateway.keystore import OWNER, KeyQuotaError, KeyStore
from agoranet.gateway.reputation import EventKind, Reputation
from agoranet.payments.pay.payer_store import ChannelState, PayerStore
from agoranet.store_writer import StoreWriter


class GatedConnection:
    """A connection whose writes (``starts``) wait until ``gate`` opens (5 s at most)."""

    def __init__(self, db: sqlite3.Connection, starts: tuple[str, ...]) -> None:
        self.db = db
        self.starts = starts
        self.gate = threading.Event()
        self.write_threads: set[int] = set()
        self.gave_up = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.lstrip().upper().startswith(self.starts):
            self.write_threads.add(threading.get_ident())
            if not self.gate.wait(timeout=5):
                self.gave_up = True  # the loop never got to open it: it was blocked
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


async def open_gate(gated: GatedConnection) -> None:
    gated.gate.set()


def count(path: Path, sql: str) -> int:
    fresh = sqlite3.connect(path)
    try:
        return int(fresh.execute(sql).fetchone()[0])
    finally:
        fresh.close()


async def test_a_reputation_event_is_written_off_the_loop_and_kept_on_close(
        tmp_path: Path) -> None:
    path = tmp_path / "reputation.sqlite"
    reputation = Reputation(path)
    gated = GatedConnection(reputation._db, ("INSERT",))
    reputation._db = gated  # type: ignore[assignment]
    loop_thread = threading.get_ident()
    opener = asyncio.create_task(open_gate(gated))
    record = reputation.add("0xnode", "http://node", EventKind.SUCCESS, model="tiny")
    assert record.successes == 1  # the score moves at once, before the file is written
    await opener  # the loop ran it while the event's write waited
    assert not gated.gave_up  # (on the loop's thread the write gave up waiting for it)
    await asyncio.to_thread(reputation.flush)
    assert gated.write_threads and loop_thread not in gated.write_threads
    assert count(path, "SELECT COUNT(*) FROM events") == 1  # flushed: in the file
    for _ in range(50):  # fire-and-forget: all of them in the file once closed
        reputation.add("0xnode", "http://node", EventKind.FAILURE, model="tiny")
    reputation._db = gated.db
    reputation.close()
    assert count(path, "SELECT COUNT(*) FROM events") == 51
    again = Reputation(path)
    try:
        assert again.record("0xnode").successes == 1
        assert again.record("0xnode").failures == 50
    finally:
        again.close()


async def test_a_key_reservation_is_committed_off_the_loop_before_the_request_goes_on(
        tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    store = KeyStore(path)
    try:
        store.create(OWNER, parent=None, budget=None)
        key = store.create("agent", parent=OWNER, budget=1_000).record
        gated = GatedConnection(store._db, ("BEGIN",))
        store._db = gated  # type: ignore[assignment]
        loop_thread = threading.get_ident()
        opener = asyncio.create_task(open_gate(gated))
        reservation = await KeyedBudget(store, key.id, Budget(None), "r1", "tiny").reserve(600)
        await opener
        assert not gated.gave_up  # the loop opened the gate while the reservation waited
        assert gated.write_threads and loop_thread not in gated.write_threads
        # awaited: committed (a fresh connection, as another gateway process, sees it)
        assert count(path, "SELECT COUNT(*) FROM reservations") == 1
        assert count(path, f"SELECT reserved FROM keys WHERE id = {key.id}") == 600
        with pytest.raises(KeyQuotaError):  # the hold counts at once
            await KeyedBudget(store, key.id, Budget(None), "r2", "tiny").reserve(600)
        gated.gate.clear()
        gated.write_threads.clear()
        reservation.release(250)  # returns at once: the settle waits for the gate
        assert not gated.gave_up
        await open_gate(gated)
        assert store.in_flight() == 0  # any use of the store waits for the settle first
        assert gated.write_threads and loop_thread not in gated.write_threads
        assert count(path, f"SELECT spent FROM keys WHERE id = {key.id}") == 250
        assert count(path, "SELECT COUNT(*) FROM reservations") == 0
        store._db = gated.db
    finally:
        store.close()


def autocheckpoint(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])


def test_the_payer_store_and_the_key_store_never_checkpoint_in_a_write(
        tmp_path: Path) -> None:
    """A checkpoint syncs the file twice: inside a save on the event loop it held every
    request; both stores checkpoint on a thread of their own instead."""
    payer = PayerStore(tmp_path / "payer")
    keys = KeyStore(tmp_path / "keys.sqlite")
    try:
        assert autocheckpoint(payer._db) == 0
        assert autocheckpoint(keys._db) == 0
        state = ChannelState("0xchannel", {"payee": "0xnode"}, deposited=1_000)
        from agoranet.sqlite_checkpoints import CHECKPOINT_EVERY
        for i in range(CHECKPOINT_EVERY):
            state.charged = i
            payer.save(state)
    finally:
        payer.close()
        keys.close()
    again = PayerStore(tmp_path / "payer")
    try:
        assert (again.load() or {})["charged"] == CHECKPOINT_EVERY - 1
    finally:
        again.close()


async def test_the_writer_runs_writes_in_order_awaited_or_not_and_drains_on_close() -> None:
    writer = StoreWriter("test-writer")
    done: list[int] = []
    gate = threading.Event()
    writer.submit(lambda: gate.wait(timeout=5))
    for i in range(5):
        writer.submit(lambda i=i: done.append(i))  # type: ignore[misc]
    awaited = asyncio.ensure_future(writer.call(lambda: list(done)))
    await asyncio.sleep(0)
    assert not awaited.done() and writer.pending == 7  # queued behind the held write
    gate.set()
    assert await awaited == [0, 1, 2, 3, 4]  # after every write handed over before it
    with pytest.raises(ZeroDivisionError):
        await writer.call(lambda: 1 // 0)
    writer.submit(lambda: 1 // 0)  # logged, the writer goes on
    for i in range(5, 100):
        writer.submit(lambda i=i: done.append(i))  # type: ignore[misc]
    writer.close()
    assert done == list(range(100)) and writer.pending == 0
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(lambda: None)


async def test_a_request_cancelled_while_its_key_hold_is_written_leaves_no_hold(
        tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite")
    try:
        store.create(OWNER, parent=None, budget=None)
        key = store.create("agent", parent=OWNER, budget=1_000).record
        gated = GatedConnection(store._db, ("BEGIN",))
        store._db = gated  # type: ignore[assignment]
        asking = asyncio.create_task(
            KeyedBudget(store, key.id, Budget(None), "r1", "tiny").reserve(600))
        while not gated.write_threads:  # the hold is being written
            await asyncio.sleep(0.01)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        gated.gate.set()
        for _ in range(500):  # the hold, once made, is settled at 0 (on the loop's callback)
            await asyncio.sleep(0.01)
            if store.in_flight() == 0 and store.get("agent").reserved == 0:
                break
        assert store.in_flight() == 0
        assert (store.get("agent").reserved, store.get("agent").spent) == (0, 0)
        store._db = gated.db
    finally:
        store.close()
