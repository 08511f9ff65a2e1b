"""The SQLite group ledger's one sync for a group (payments/accept/sqlite_group.py).

:meth:`SqliteGroupLedger.sync` flushes the write-ahead log (``fdatasync`` on its file)
and, the first time it sees a log file, the folder that names it; a log a checkpoint
removed owes nothing; a log it cannot open or flush is a LedgerError naming it (the
writer then fails the group's vouchers). The system calls are watched, not replaced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agoranet.errors import LedgerError
from agoranet.payments.accept.sqlite_group import SqliteGroupLedger
from agoranet.payments.receipts import ReceiptSigner

NODE = ReceiptSigner(bytes(Account.create().key))
CID = "0x" + "09" * 32


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    book = SqliteGroupLedger(tmp_path / "ledger.sqlite")
    book.ensure_channel(CID, "{}", NODE.address, 0)
    with book.deferral.deferring():
        book.accept_voucher("r1", CID, 1000, "0x", 1000)
    yield book
    book.close()


def _watch(monkeypatch: pytest.MonkeyPatch, name: str, calls: list[tuple[str, str]],
           fail: BaseException | None = None) -> None:
    real: Callable[[int], None] = getattr(os, name)

    def watched(fd: int) -> None:
        calls.append((name, str(Path(f"/proc/self/fd/{fd}").readlink())))
        if fail is not None:
            raise fail
        real(fd)
    monkeypatch.setattr(os, name, watched)


def test_a_sync_flushes_the_log_and_names_it_durably_once(
        ledger: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    _watch(monkeypatch, "fdatasync", calls)
    _watch(monkeypatch, "fsync", calls)
    log = str(tmp_path / "ledger.sqlite-wal")
    ledger.sync()
    assert calls == [("fdatasync", log), ("fsync", str(tmp_path))]
    ledger.sync()  # the same log: its name is durable already
    assert calls[2:] == [("fdatasync", log)]


def test_a_log_that_cannot_be_flushed_is_a_ledger_error_naming_it(
        ledger: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    _watch(monkeypatch, "fdatasync", calls, fail=OSError(5, "I/O error"))
    closed: list[int] = []
    close = os.close
    monkeypatch.setattr(os, "close", lambda fd: (closed.append(fd), close(fd))[1])
    with pytest.raises(LedgerError) as failed:
        ledger.sync()
    log = tmp_path / "ledger.sqlite-wal"
    assert str(failed.value) == f"cannot sync the ledger's log {log}: [Errno 5] I/O error"
    assert len(closed) == 1  # the log's descriptor is not left open


def test_a_log_that_cannot_be_opened_is_a_ledger_error_and_a_removed_one_owes_nothing(
        ledger: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "ledger.sqlite-wal"
    real_open = os.open
    refusal: list[BaseException] = [PermissionError(13, "Permission denied")]

    def opening(path: Any, flags: int, *args: Any) -> int:
        if Path(path) == log:
            raise refusal[0]
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", opening)
    with pytest.raises(LedgerError) as failed:
        ledger.sync()
    assert str(failed.value) == \
        f"cannot sync the ledger's log {log}: [Errno 13] Permission denied"
    refusal[0] = FileNotFoundError(2, "No such file or directory")
    assert ledger.sync() is None  # checkpointed into the (synced) database and removed


def test_an_in_memory_ledger_has_nothing_to_sync_or_checkpoint(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ":memory:-wal").write_bytes(b"")  # a file by the name a log would have
    book = SqliteGroupLedger(":memory:")
    calls: list[tuple[str, str]] = []
    _watch(monkeypatch, "fdatasync", calls)
    try:
        book.sync()
        assert calls == []  # no file is its log
        assert book._checkpoints is None  # no thread checkpoints a log it does not have
    finally:
        book.close()


def test_a_file_ledger_checkpoints_its_log_on_a_thread_of_its_own(ledger: Any) -> None:
    """The writer's commits never checkpoint (a checkpoint syncs): every CHECKPOINT_EVERY
    writes the ledger's own checkpoint thread does, so the log stays bounded."""
    import threading
    import time

    from agoranet.sqlite_checkpoints import CHECKPOINT_EVERY

    with ledger.deferral.deferring():
        for n in range(CHECKPOINT_EVERY):
            ledger.ensure_channel("0x" + f"{n + 100:064x}", "{}", NODE.address, 0)
    deadline = time.monotonic() + 20  # a bound, not a timing assert
    while ledger._checkpoints.checkpoints < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ledger._checkpoints.checkpoints >= 1
    assert "agoranet-ledger-checkpoints" in [t.name for t in threading.enumerate()]
