"""The node's cache of on-chain channel state is bounded (issue #12, defect 9).

Anyone can make up channels that pass the signature check (a fresh salt, a key of
their own) and so get their state read once; before, every one stayed cached for
the life of the node.
"""

from __future__ import annotations

import time

from agoranet.payments.accept.verifier import OnchainState, StateCache


def channel(n: int) -> str:
    return "0x" + f"{n:064x}"


async def test_least_recently_used_channels_are_evicted() -> None:
    reads: list[str] = []

    def reader(channel_id: str) -> OnchainState:
        reads.append(channel_id)
        return OnchainState(0, 0, 0, 0, time.monotonic())

    cache = StateCache(reader, ttl=3600.0, max_entries=100)
    kept = channel(0)
    await cache.get(kept)
    for n in range(1, 1000):
        await cache.get(channel(n))
        if n % 50 == 0:
            await cache.get(kept)  # in use: stays
    assert len(cache) == 100
    assert cache.cached(kept) is not None
    assert cache.cached(channel(1)) is None  # the oldest went
    assert cache.cached(channel(999)) is not None
    before = len(reads)
    await cache.get(kept)
    assert len(reads) == before  # still served from the cache
