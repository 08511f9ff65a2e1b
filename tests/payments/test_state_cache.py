"""StateCache's stale-while-error rules and ChainExecutor's bounds (fake readers: logic only).

The real frozen-RPC scenario with a paid node on the dev chain is in test_frozen_rpc.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from agoranet.chain.executor import ChainExecutor
from agoranet.errors import ChainBusyError, ChainError, ChainTimeoutError, PaymentRequiredError
from agoranet.payments.accept.verifier import OnchainState, StateCache

pytestmark = pytest.mark.timeout(30)

CID = "0x" + "ab" * 32


class Reader:
    """Answers with a fixed state until ``fail`` is set, then raises ChainError."""

    def __init__(self, balance: int = 1_000) -> None:
        self.balance = balance
        self.fail = False
        self.calls = 0

    def __call__(self, channel_id: str) -> OnchainState:
        self.calls += 1
        if self.fail:
            raise ChainError("cannot read channel: connection refused")
        return OnchainState(self.balance, 100, 0, 0, time.monotonic())


@pytest.fixture
def executor() -> Iterator[ChainExecutor]:
    ex = ChainExecutor(workers=1, timeout=0.3)
    yield ex
    ex.close()


async def test_known_channel_is_served_stale_while_the_chain_fails(
        executor: ChainExecutor) -> None:
    reader = Reader()
    cache = StateCache(reader, ttl=0.0, executor=executor, max_stale=60.0, retry_after=60.0)
    first = await cache.get(CID, need=500)
    reader.fail = True
    assert await cache.get(CID, need=500) is first  # the read failed: cached state serves
    assert await cache.get(CID, need=1_000) is first  # still within the cached balance
    assert reader.calls == 2  # after the failure the chain is left alone (back-off)
    with pytest.raises(PaymentRequiredError, match="on-chain state"):
        await cache.get(CID, need=1_001)  # above the cached balance: a top-up it cannot see
    with pytest.raises(PaymentRequiredError, match="connection refused"):
        await cache.get("0x" + "cd" * 32)  # never read: prompt 402, saying why
    assert reader.calls == 2
    with pytest.raises(PaymentRequiredError):
        await cache.refresh(CID)  # a fresh read (after a deposit) is never served stale
    assert reader.calls == 3  # ... and is tried even within the back-off


async def test_stale_state_is_not_served_past_max_stale(executor: ChainExecutor) -> None:
    reader = Reader()
    cache = StateCache(reader, ttl=0.0, executor=executor, max_stale=0.0, retry_after=0.0)
    await cache.get(CID, need=1)
    reader.fail = True
    with pytest.raises(PaymentRequiredError, match="on-chain state"):
        await cache.get(CID, need=1)


async def test_the_chain_is_tried_again_after_the_back_off(executor: ChainExecutor) -> None:
    reader = Reader()
    cache = StateCache(reader, ttl=0.0, executor=executor, max_stale=60.0, retry_after=0.0)
    await cache.get(CID)
    reader.fail = True
    await cache.get(CID)
    reader.fail = False
    reader.balance = 5_000  # a top-up, visible once the chain answers
    assert (await cache.get(CID, need=5_000)).balance == 5_000
    assert reader.calls == 3


async def test_executor_deadline_and_bounded_threads() -> None:
    release = threading.Event()
    started = threading.Event()

    def frozen() -> int:
        started.set()
        release.wait(10)
        return 1

    executor = ChainExecutor(workers=1, timeout=0.2, max_pending=2, name="test-chain")
    try:
        with pytest.raises(ChainTimeoutError, match=r"did not answer within 0\.2 s"):
            await executor.call(frozen, what="frozen call")
        assert started.is_set()
        # the worker is still stuck: a second call queues behind it and times out unrun
        with pytest.raises(ChainTimeoutError):
            await executor.call(lambda: 2, what="queued call")
        assert executor.pending == 1
        # fill the queue: the next one is refused at once
        queued = asyncio.ensure_future(executor.call(lambda: 3, what="waiting", deadline=None))
        await asyncio.sleep(0)
        with pytest.raises(ChainBusyError, match="already waiting"):
            await executor.call(lambda: 4, what="one too many")
        assert sum(t.name.startswith("test-chain") for t in threading.enumerate()) == 1
        release.set()
        assert await queued == 3
        assert await executor.call(lambda: 5, what="after") == 5
        assert executor.pending == 0
    finally:
        release.set()
        executor.close()
