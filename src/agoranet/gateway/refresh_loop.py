"""The refresh loop shared by the gateway's directories of nodes and of tool sellers.

It refreshes everything at once, then every ``refresh_s`` seconds, and in between,
every ``retry_s`` seconds, only what has no offer yet (``refresh(missing_only=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

__all__ = ["RefreshLoop", "Refreshable"]


class Refreshable(Protocol):
    async def refresh(self, *, missing_only: bool = False) -> None: ...


class RefreshLoop:
    """Runs ``target.refresh`` on its own task until :meth:`stop`."""

    def __init__(self, target: Refreshable, refresh_s: float) -> None:
        self._target = target
        self._refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None

    def start(self, retry_s: float) -> None:
        self._task = asyncio.create_task(self._run(retry_s))

    async def _run(self, retry_s: float) -> None:
        loop = asyncio.get_running_loop()
        await self._target.refresh()
        last = loop.time()
        while True:
            await asyncio.sleep(min(retry_s, self._refresh_s))
            now = loop.time()
            if now - last >= self._refresh_s:
                await self._target.refresh()
                last = now
            else:
                await self._target.refresh(missing_only=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
