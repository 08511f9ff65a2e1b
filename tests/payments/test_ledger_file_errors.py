"""What the SQLite ledger says when its file cannot be used, in full: the operator reads
what happened and what to do (restore it, or move it aside), and the file is left as it
is. An in-memory ledger leaves no file; a new ledger's folder entry is made durable."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from agoranet.errors import LedgerError
from agoranet.payments.accept.sqlite_ledger import SqliteLedger

CID = "0x" + "15" * 32


def _refusal(path: Path) -> str:
    with pytest.raises(LedgerError) as info:
        SqliteLedger(path)
    return str(info.value)


def test_an_empty_file_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"")
    assert _refusal(path) == (
        f"the ledger {path} is empty (0 bytes): it was truncated or replaced, and the node "
        "will not start on it, since it may have held unclaimed vouchers. Restore it from a "
        "backup, or move it aside to start a new ledger")
    assert path.read_bytes() == b""


def test_a_write_ahead_log_without_its_ledger_is_refused_saying_what_to_do(
        tmp_path: Path) -> None:
    path, wal = tmp_path / "ledger.sqlite", tmp_path / "ledger.sqlite-wal"
    wal.write_bytes(b"\0" * 4096)
    assert _refusal(path) == (
        f"the ledger {path} is missing but its write-ahead log {wal} is there (moved or "
        "deleted without it?): restore the ledger, or move the log aside to start a new one")
    assert not path.exists()


def test_an_empty_write_ahead_log_left_alone_holds_nothing_a_new_ledger_starts(
        tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Path(f"{path}-wal").write_bytes(b"")
    book = SqliteLedger(path)
    assert book.ensure_channel(CID, "{}", "0xp", 0).charged == 0
    book.close()


def test_a_folder_where_the_ledger_should_be_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.mkdir()
    assert _refusal(path) == f"the ledger {path} is not a file"


def test_a_file_that_is_no_database_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"not a database at all " * 300)
    assert _refusal(path) == (
        f"cannot open the ledger {path}: file is not a database; it is left as it is (move it "
        "aside only if you mean to lose its vouchers)")


def test_a_ledger_under_a_file_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    path = tmp_path / "plain" / "ledger.sqlite"
    assert _refusal(path).startswith(f"cannot open the ledger {path}: [Errno ")


def test_a_foreign_database_names_every_table_it_lacks(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.execute("CREATE TABLE channels (x TEXT)")
    db.commit()
    db.close()
    assert _refusal(path) == (f"{path} is not an agoranet ledger (no table claims, receipts, "
                              "running_receipts, settlements, vouchers)")


def test_a_ledger_that_fails_its_check_names_the_first_problems(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    SqliteLedger(path).close()
    db = sqlite3.connect(path)  # rows that break a NOT NULL rule the schema then claims
    db.execute("CREATE TABLE notes (a)")
    db.executemany("INSERT INTO notes VALUES (?)", [(None,)] * 5)
    db.commit()
    db.execute("PRAGMA writable_schema = ON")
    db.execute("UPDATE sqlite_master SET sql = 'CREATE TABLE notes (a NOT NULL)' "
               "WHERE name = 'notes'")
    db.commit()
    db.close()
    assert _refusal(path) == (f"the ledger {path} is corrupt (NULL value in notes.a; "
                              "NULL value in notes.a; NULL value in notes.a)")


def test_an_in_memory_ledger_leaves_no_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    book = SqliteLedger(":memory:")
    assert book.ensure_channel(CID, "{}", "0xp", 0).channel_id == CID
    book.close()
    assert list(tmp_path.iterdir()) == []


def test_a_new_ledgers_folder_is_fsyncd_after_the_rename(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The new ledger is built aside and renamed into place; the rename is durable only once
    the folder is fsync'd (SQLite's own fsyncs do not cover the folder entry)."""
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    SqliteLedger(tmp_path / "ledger.sqlite").close()
    assert synced == [True]
