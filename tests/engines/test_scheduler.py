import asyncio

import pytest

from agoranet.engines.base import Delta, Finish, StreamEvent
from agoranet.engines.scheduler import StepScheduler
from agoranet.errors import OverloadedError


class CountJob:
    def __init__(self, name: str, steps: int, log: list[str]) -> None:
        self.name, self.steps, self.log, self.done = name, steps, log, 0

    def step(self) -> list[StreamEvent]:
        self.done += 1
        self.log.append(self.name)
        if self.done >= self.steps:
            return [Delta(self.name), Finish("length", 1, self.done)]
        return [Delta(self.name)]


class FailingJob:
    def step(self) -> list[StreamEvent]:
        raise RuntimeError("boom")


async def drain(scheduler: StepScheduler, job: object) -> list[StreamEvent]:
    return [event async for event in scheduler.run(job)]  # type: ignore[arg-type]


async def test_active_jobs_take_turns() -> None:
    scheduler = StepScheduler(max_active=2, max_queue=0)
    log: list[str] = []
    try:
        await asyncio.gather(drain(scheduler, CountJob("a", 5, log)),
                             drain(scheduler, CountJob("b", 5, log)))
    finally:
        scheduler.close()
    # Interleaved, not one after the other: both appear in the first four steps.
    assert set(log[:4]) == {"a", "b"}
    assert log.count("a") == log.count("b") == 5


async def test_over_capacity_is_refused_with_retry_after() -> None:
    scheduler = StepScheduler(max_active=1, max_queue=1)
    log: list[str] = []
    first = scheduler.run(CountJob("a", 10_000, log))
    second = scheduler.run(CountJob("b", 3, log))
    third = scheduler.run(CountJob("c", 3, log))
    try:
        await anext(first)
        task = asyncio.ensure_future(anext(second))
        await asyncio.sleep(0.05)
        with pytest.raises(OverloadedError) as caught:
            await anext(third)
        assert caught.value.retry_after >= 1
    finally:
        await first.aclose()
        await task
        await second.aclose()
        scheduler.close()


async def test_closing_the_stream_cancels_the_job() -> None:
    scheduler = StepScheduler(max_active=1, max_queue=0)
    log: list[str] = []
    stream = scheduler.run(CountJob("a", 1_000_000, log))
    await anext(stream)
    await stream.aclose()
    await asyncio.sleep(0.05)
    steps = len(log)
    await asyncio.sleep(0.05)
    try:
        assert len(log) == steps < 1_000_000
        assert scheduler.stats()["cancelled"] == 1
        assert scheduler.stats()["active"] == 0
    finally:
        scheduler.close()


async def test_a_failing_job_raises_in_its_own_stream_only() -> None:
    scheduler = StepScheduler(max_active=2, max_queue=0)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            await drain(scheduler, FailingJob())
        events = await drain(scheduler, CountJob("ok", 2, []))
        assert isinstance(events[-1], Finish)
        assert scheduler.stats()["failed"] == 1
    finally:
        scheduler.close()
