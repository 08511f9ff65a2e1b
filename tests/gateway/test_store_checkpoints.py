"""The gateway's spend log and reputation events never checkpoint (fsync) on the caller's
thread -- the event loop's: their connection's automatic checkpoint is off, and a
thread of their own checkpoints every few hundred writes (agoranet/sqlite_checkpoints.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agoranet.gateway.reputation import EventKind, Reputation
from agoranet.gateway.spendlog import SpendLog, SpendRow
from helpers import wait_until


def autocheckpoint(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])


def test_the_spend_log_checkpoints_off_the_callers_thread(tmp_path: Path) -> None:
    log = SpendLog(tmp_path / "spend.sqlite")
    try:
        assert autocheckpoint(log._db) == 0  # a row's commit never checkpoints
        from agoranet.sqlite_checkpoints import CHECKPOINT_EVERY
        for i in range(CHECKPOINT_EVERY + 5):
            log.add(SpendRow(f"r{i}", "tiny", "http://node", 10, 1, 7, 1.0, 2.0, "ok"))
        wait_until(lambda: log._checkpoints.checkpoints >= 1, "a background checkpoint",
                   timeout=20, every=0.01)
        assert "agoranet-spendlog-checkpoints" in {t.name for t in threading.enumerate()}
        assert log.total() == 7 * (CHECKPOINT_EVERY + 5)
    finally:
        log.close()
    assert not any(t.name == "agoranet-spendlog-checkpoints" for t in threading.enumerate())
    reopened = SpendLog(tmp_path / "spend.sqlite")
    try:
        assert len(reopened.rows()) == CHECKPOINT_EVERY + 5
    finally:
        reopened.close()


def test_reputation_events_checkpoint_off_the_callers_thread(tmp_path: Path) -> None:
    reputation = Reputation(tmp_path / "reputation.sqlite")
    try:
        assert autocheckpoint(reputation._db) == 0
        from agoranet.sqlite_checkpoints import CHECKPOINT_EVERY
        for _ in range(CHECKPOINT_EVERY):
            reputation.add("0xnode", "http://node", EventKind.SUCCESS, model="tiny")
        wait_until(lambda: reputation._checkpoints.checkpoints >= 1, "a background checkpoint",
                   timeout=20, every=0.01)
    finally:
        reputation.close()
    again = Reputation(tmp_path / "reputation.sqlite")
    try:
        assert again.record("0xnode").successes == CHECKPOINT_EVERY
    finally:
        again.close()


def test_checkpoints_move_the_log_into_the_database(tmp_path: Path) -> None:
    from agoranet.sqlite_checkpoints import BackgroundCheckpoints

    path = tmp_path / "x.sqlite"
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (a)")
    checkpoints = BackgroundCheckpoints(path, db, every=10)
    try:
        for i in range(9):
            db.execute("INSERT INTO t VALUES (?)", (i,))
            checkpoints.wrote()
        assert checkpoints.checkpoints == 0  # not yet due: no thread either
        assert path.stat().st_size <= 4096  # the table is only in the log so far
        db.execute("INSERT INTO t VALUES (9)")
        checkpoints.wrote()
        wait_until(lambda: checkpoints.checkpoints == 1, "a checkpoint after 10 writes",
                   timeout=20, every=0.01)
        assert path.stat().st_size >= 2 * 4096  # the log's pages moved into the database
    finally:
        checkpoints.close()
        db.close()
    with pytest.raises(ValueError):
        BackgroundCheckpoints(path, sqlite3.connect(path), every=0)


def test_the_log_restarts_under_steady_writes(tmp_path: Path) -> None:
    """A store written without pause (a busy node's ledger) still reuses its log: each
    checkpoint leaves it free to start again from its beginning, so it stays as small as
    the writes between two checkpoints, not one frame per page written since the store
    opened (44 KB a paid request on the ledger). A checkpoint that only copies the log
    (``PASSIVE``) while writes go on never found it fully copied, and it grew forever."""
    from agoranet.sqlite_checkpoints import BackgroundCheckpoints

    path = tmp_path / "busy.sqlite"
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, blob BLOB)")
    checkpoints = BackgroundCheckpoints(path, db, every=50)
    log = Path(f"{path}-wal")
    largest = 0
    try:
        for _ in range(3000):
            db.execute("INSERT INTO t (blob) VALUES (?)", (bytes(1000),))
            checkpoints.wrote()
            largest = max(largest, log.stat().st_size)
            time.sleep(0.0002)  # a server's next request comes (the checkpoints' thread runs)
        assert checkpoints.checkpoints >= 30 and checkpoints.restarts >= 10
    finally:
        checkpoints.close()
        db.close()
    # ~3 MB of pages were written; 50 writes between checkpoints are ~100 frames (400 KB)
    assert largest < 1_500_000, f"the log grew to {largest} bytes"
