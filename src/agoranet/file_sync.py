"""Flushing a file to disk, started from the event loop with no thread (Linux AIO).

A paid request waits for its voucher to reach the disk (``fdatasync`` of the
ledger's log) while it is tokenised. Asked of a thread, the flush starts only once
that thread has woken and taken the interpreter's lock, which the event loop holds
while it prepares the request: on a small machine the flush started up to a
millisecond after it was asked for. :meth:`FileSyncs.flush` asks the kernel
instead (Linux AIO, ``IOCB_CMD_FDSYNC``/``IOCB_CMD_FSYNC``, kernel 4.18 and later):
the flush has started when the call returns, it runs in the kernel, and its
completion wakes the event loop through an ``eventfd`` the loop watches. What is
flushed, and when it is done, are exactly ``os.fdatasync``'s (``os.fsync``'s).

:meth:`FileSyncs.open` answers None where this is not available (not Linux, an
unknown architecture, AIO refused); a flush the kernel will not take this way, or
one beyond :data:`MAX_IN_FLIGHT` at once, is made on a thread instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import platform
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["MAX_IN_FLIGHT", "FileSyncs"]

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT: Final = 64  # flushes submitted and not completed at most, per FileSyncs

# The AIO system calls' numbers (asm/unistd.h): io_setup, io_destroy, io_getevents,
# io_submit.
_SYSCALLS: Final = {
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}
_IOCB_CMD_FSYNC: Final = 2
_IOCB_CMD_FDSYNC: Final = 3
_IOCB_FLAG_RESFD: Final = 1  # completion counted on the eventfd in aio_resfd


class _Iocb(ctypes.Structure):
    """``struct iocb`` (linux/aio_abi.h), little-endian layout."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    """``struct io_event``."""

    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


class FileSyncs:
    """Flushes of files, awaited on one event loop, through one kernel AIO context."""

    def __init__(self, syscall: Callable[..., int],
                 calls: tuple[int, int, int, int], context: ctypes.c_ulong,
                 eventfd: int) -> None:
        self._syscall = syscall
        self._destroy, self._getevents, self._submit = calls[1:]
        self._context = context
        self._eventfd = eventfd
        self._blocks = (_Iocb * MAX_IN_FLIGHT)()
        self._free = list(range(MAX_IN_FLIGHT))  # slots of _blocks not in flight
        self._pending: dict[int, asyncio.Future[None]] = {}  # slot -> its flush
        self._one = (ctypes.POINTER(_Iocb) * 1)()
        self._events = (_IoEvent * MAX_IN_FLIGHT)()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @classmethod
    def open(cls) -> FileSyncs | None:
        """A new one, or None where the kernel's AIO cannot be used here."""
        calls = _SYSCALLS.get(platform.machine())
        if not sys.platform.startswith("linux") or calls is None \
                or sys.byteorder != "little" or not hasattr(os, "eventfd"):
            return None
        try:
            syscall = ctypes.CDLL(None, use_errno=True).syscall
        except (OSError, AttributeError):
            return None
        syscall.restype = ctypes.c_long
        context = ctypes.c_ulong(0)
        if syscall(ctypes.c_long(calls[0]), ctypes.c_uint(MAX_IN_FLIGHT),
                   ctypes.byref(context)) != 0:
            logger.info("no kernel AIO here (%s): files are flushed on a thread",
                        os.strerror(ctypes.get_errno()))
            return None
        eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return cls(syscall, calls, context, eventfd)

    def flush(self, fd: int, data_only: bool = True) -> asyncio.Future[None]:
        """``os.fdatasync(fd)`` (``os.fsync`` unless ``data_only``), started now: a future
        of the running loop, done when the flush is (failed with OSError as they raise
        it). ``fd`` must stay open until then."""
        if self._closed:
            raise OSError(errno.EBADF, "the file syncs are closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # the first loop, or the next once the last is idle
            if self._pending:
                raise RuntimeError("FileSyncs serves one event loop at a time")
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._eventfd)
            self._loop = loop
            loop.add_reader(self._eventfd, self._reap)
        sync = os.fdatasync if data_only else os.fsync
        if not self._free:  # as many in flight as the context holds: on a thread
            return loop.run_in_executor(None, sync, fd)
        slot = self._free.pop()
        block = self._blocks[slot]
        ctypes.memset(ctypes.byref(block), 0, ctypes.sizeof(_Iocb))
        block.aio_data = slot
        block.aio_fildes = fd
        block.aio_lio_opcode = _IOCB_CMD_FDSYNC if data_only else _IOCB_CMD_FSYNC
        block.aio_flags = _IOCB_FLAG_RESFD
        block.aio_resfd = self._eventfd
        self._one[0] = ctypes.pointer(block)
        if self._syscall(ctypes.c_long(self._submit), self._context, ctypes.c_long(1),
                         self._one) != 1:  # refused (this file, a sandbox): on a thread,
            self._free.append(slot)  # which raises what the flush itself would
            return loop.run_in_executor(None, sync, fd)
        done: asyncio.Future[None] = loop.create_future()
        self._pending[slot] = done
        return done

    def _reap(self, *, wait: bool = False) -> None:
        """Complete the flushes the kernel finished (``wait``: all of them, waiting)."""
        if not wait:
            try:
                os.eventfd_read(self._eventfd)
            except BlockingIOError:
                return
        while self._pending:
            least = len(self._pending) if wait else 0
            count = self._syscall(ctypes.c_long(self._getevents), self._context,
                                  ctypes.c_long(least), ctypes.c_long(MAX_IN_FLIGHT),
                                  self._events, None)
            if count < 0 and ctypes.get_errno() == errno.EINTR:
                continue
            if count <= 0:
                return
            for event in self._events[:count]:
                slot = int(event.data)
                done = self._pending.pop(slot, None)
                if done is None:
                    continue
                self._free.append(slot)
                error = None if event.res >= 0 else \
                    OSError(-event.res, os.strerror(-event.res))
                (_settle if wait else _answer)(done, error)

    def close(self) -> None:
        """Wait for the flushes in flight (their futures are answered on their loop),
        stop watching the loop, free the context."""
        if self._closed:
            return
        self._closed = True
        self._reap(wait=True)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._eventfd)
        self._syscall(ctypes.c_long(self._destroy), self._context)
        os.close(self._eventfd)


def _settle(done: asyncio.Future[None], error: OSError | None) -> None:
    """Answer ``done`` on its loop, from any thread (not at all if its loop is closed)."""
    loop = done.get_loop()
    if not loop.is_closed():
        loop.call_soon_threadsafe(_answer, done, error)


def _answer(done: asyncio.Future[None], error: OSError | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
