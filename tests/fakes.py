"""A fake engine for unit tests of serving logic (never the only test of a path)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agoranet.engines.base import (
    Delta,
    Finish,
    GenerationRequest,
    ModelInfo,
    Prepared,
    StreamEvent,
)
from agoranet.engines.scheduler import StepScheduler
from agoranet.errors import ModelNotFoundError


class _WordsJob:
    def __init__(self, prepared: Prepared, delay: float) -> None:
        self.prepared = prepared
        self.delay = delay
        self.sent = 0

    def step(self) -> list[StreamEvent]:
        import time

        time.sleep(self.delay)
        self.sent += 1
        request = self.prepared.request
        events: list[StreamEvent] = [Delta(f"w{self.sent} ")]
        if self.sent >= request.max_tokens:
            events.append(Finish("length", self.prepared.prompt_tokens, self.sent))
        return events


class FakeEngine:
    """Emits ``w1 w2 ...`` one word per step; prompt tokens = words in the prompt."""

    name = "fake"

    def __init__(self, *, delay: float = 0.0, max_active: int = 2, max_queue: int = 2,
                 context_length: int = 64) -> None:
        self.delay = delay
        self.context_length = context_length
        self.scheduler = StepScheduler(max_active=max_active, max_queue=max_queue, name="fake")

    def models(self) -> list[ModelInfo]:
        return [ModelInfo("fake", self.context_length)]

    async def prepare(self, request: GenerationRequest) -> Prepared:
        if request.model != "fake":
            raise ModelNotFoundError("no such model", param="model")
        text = request.prompt or " ".join(m.content for m in request.messages or ())
        return Prepared(request, max(1, len(text.split())), self.context_length)

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        return self.scheduler.run(_WordsJob(prepared, self.delay))

    def stats(self) -> dict[str, int]:
        return self.scheduler.stats()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.scheduler.close)
