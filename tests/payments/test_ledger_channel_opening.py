"""Opening a channel in the SQLite ledger: a known one is found without waiting for a writer
(another process's), and two writers opening a new one at once end up with one row, the
first one's. (The protocol's rules for channels and claims: test_ledger*.py.)"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from agoranet.payments.accept.ledger import ChannelRecord
from agoranet.payments.accept.sqlite_ledger import SqliteLedger

CID = "0x" + "ab" * 32


def test_a_known_channel_is_found_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """Another process (a `node claim`, say) holds the write lock: a request on a known
    channel is not held up by it."""
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    known = ledger.ensure_channel(CID, "{}", "0xpayer", 0)
    ledger._db.execute("PRAGMA busy_timeout = 200")  # a wait would fail fast, not hang
    other = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert ledger.ensure_channel(CID, "{}", "0xpayer", 0) == known
    finally:
        other.execute("ROLLBACK")
        other.close()
    ledger.close()


def test_two_writers_opening_one_new_channel_make_one_row(tmp_path: Path) -> None:
    """The channel is not there when this ledger looks; another process creates it while
    this one waits for the write lock: this one then takes the other's row, and fails not."""
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    waiting = threading.Event()
    ledger._db.set_trace_callback(lambda sql: waiting.set() if sql == "BEGIN IMMEDIATE"
                                  else None)
    other = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO channels VALUES (?, '{\"first\": 1}', '0xfirst', 5, 5, '0x', 5, "
                  "NULL, ?)", (CID, time.time()))
    result: list[Any] = []
    opener = threading.Thread(
        target=lambda: result.append(ledger.ensure_channel(CID, "{}", "0xsecond", 0)))
    opener.start()
    assert waiting.wait(10)  # it looked, found nothing, and now waits to write
    time.sleep(0.2)
    other.execute("COMMIT")
    opener.join(10)
    other.close()
    assert result == [ChannelRecord(CID, '{"first": 1}', "0xfirst", 5, 5, "0x", 5, None)]
    ledger.close()
