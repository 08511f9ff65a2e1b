"""Flushes started from the event loop through the kernel's AIO (file_sync.py).

A flush is under way when ``flush`` returns and its future is done when the kernel says
so; more at once than the context holds go to a thread; a folder is flushed whole
(``fsync``); the kernel's error is raised as ``os.fdatasync`` raises it; closing waits
for the flushes in flight and answers them; a closed one, or another loop, is refused.
Linux only (where the node uses it); elsewhere FileSyncs.open() is None.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agoranet.file_sync import MAX_IN_FLIGHT, FileSyncs

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def syncs() -> Iterator[FileSyncs]:
    opened = FileSyncs.open()
    if opened is None:
        pytest.skip("no kernel AIO on this machine")
    yield opened
    opened.close()


@pytest.fixture
def written(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "log", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"x" * 65536)
    yield fd
    os.close(fd)


async def test_a_flush_is_under_way_when_asked_and_done_when_the_kernel_says(
        syncs: FileSyncs, written: int) -> None:
    done = syncs.flush(written)
    assert not done.done()  # the kernel answers through the loop
    await asyncio.wait_for(done, 10)
    assert done.result() is None
    for _ in range(3):  # a slot is used again
        os.write(written, b"y" * 4096)
        await asyncio.wait_for(syncs.flush(written), 10)


async def test_more_flushes_at_once_than_the_context_holds_all_complete(
        syncs: FileSyncs, written: int) -> None:
    flushes = [syncs.flush(written) for _ in range(MAX_IN_FLIGHT + 8)]
    await asyncio.wait_for(asyncio.gather(*flushes), 20)
    await asyncio.wait_for(syncs.flush(written), 10)  # every slot came back


async def test_a_folder_is_flushed_whole(syncs: FileSyncs, tmp_path: Path) -> None:
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        await asyncio.wait_for(syncs.flush(folder, data_only=False), 10)
    finally:
        os.close(folder)


async def test_the_kernels_error_is_raised_as_fdatasync_raises_it(syncs: FileSyncs,
                                                                   tmp_path: Path) -> None:
    fd = os.open(tmp_path / "gone", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    with pytest.raises(OSError) as failed:
        await asyncio.wait_for(syncs.flush(fd), 10)
    assert failed.value.errno == errno.EBADF


async def test_closing_waits_for_the_flushes_in_flight(syncs: FileSyncs,
                                                       written: int) -> None:
    flushes = [syncs.flush(written) for _ in range(4)]
    syncs.close()
    await asyncio.wait_for(asyncio.gather(*flushes), 10)
    with pytest.raises(OSError, match="closed"):
        syncs.flush(written)


def test_one_event_loop_at_a_time_is_served(syncs: FileSyncs, written: int) -> None:
    """A loop's flushes must end before another loop's start (a test client's loops, one
    after the other); then the next loop is served."""
    async def flush() -> None:
        await asyncio.wait_for(syncs.flush(written), 10)
    asyncio.run(flush())
    asyncio.run(flush())  # the first loop is closed, idle: the second is served

    async def overlapping() -> None:
        pending = syncs.flush(written)
        refused: list[BaseException] = []

        def another_loop() -> None:
            try:
                asyncio.run(flush())
            except RuntimeError as exc:
                refused.append(exc)
        other = threading.Thread(target=another_loop)
        other.start()
        other.join()  # (this loop does not run meanwhile: its flush is still pending)
        assert [str(e) for e in refused] == ["FileSyncs serves one event loop at a time"]
        await asyncio.wait_for(pending, 10)
    asyncio.run(overlapping())


def test_no_kernel_aio_on_an_unknown_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agoranet.file_sync.platform.machine", lambda: "vax")
    assert FileSyncs.open() is None
