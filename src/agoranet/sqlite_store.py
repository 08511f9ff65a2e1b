"""One SQLite connection shared by threads: short write transactions and reads.

The node's ledger and its fine-tuning store keep their records the same way: one
connection in autocommit mode (``isolation_level=None``), every write one
``BEGIN IMMEDIATE`` transaction -- SQLite's write lock makes it a compare-and-set
-- fsync'd (``synchronous=FULL``) or not (``NORMAL``) as the caller asks, every
call under one process-wide lock, and SQLite's errors raised as the store's own
:class:`~agoranet.errors.AgoranetError` subclass, naming the store.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from agoranet.errors import AgoranetError

__all__ = ["SqliteStore"]


class SqliteStore:
    """Transactions and reads on ``self._db``; a subclass sets ``_db`` and calls
    :meth:`_start_transactions` once its connection is open."""

    _store_name: ClassVar[str]  # in messages: "ledger is unavailable: ..."
    _error: ClassVar[type[AgoranetError]]
    _db: sqlite3.Connection

    def _start_transactions(self) -> None:
        self._lock = threading.Lock()
        self._fsync = True

    @contextmanager
    def _write(self, *, fsync: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                if fsync != self._fsync:
                    self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
                    self._fsync = fsync
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(f"{self._store_name} is unavailable: {exc}") from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise self._error(f"{self._store_name} commit failed: {exc}") from exc

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise self._error(f"{self._store_name} read failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()
