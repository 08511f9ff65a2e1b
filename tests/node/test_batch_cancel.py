"""A stream cancelled mid-batch frees its slot at once, as the node's /health shows (issue #17)."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

from helpers import node_process

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 450,
        "temperature": 0, "stream": True, "ignore_eos": True}
WAIT_S = 60.0  # a bound on the test, not a speed requirement


async def health(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/health")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def first_chunk(lines: Any) -> None:
    async for line in lines:
        if line.startswith("data: ") and '"content"' in line:
            return
    raise AssertionError("the stream ended before its first token")


async def check_cancel(root: str) -> None:
    async with httpx.AsyncClient(base_url=root, timeout=WAIT_S) as client, AsyncExitStack() as stack:
        before = await health(client)
        assert before["active"] == 0
        lines = []
        for _ in range(3):
            response = await stack.enter_async_context(
                client.stream("POST", "/v1/chat/completions", json=BODY))
            assert response.status_code == 200
            lines.append(response.aiter_lines())
        for stream in lines:
            await first_chunk(stream)
        assert (await health(client))["active"] == 3  # one batch of three
        async with httpx.AsyncClient(base_url=root, timeout=WAIT_S) as other, \
                other.stream("POST", "/v1/chat/completions", json=BODY) as dropped:
            await first_chunk(dropped.aiter_lines())  # it joined the running batch
            assert (await health(client))["active"] == 4
        # ``other`` is closed: the client went away mid-answer, the others go on
        deadline = time.monotonic() + WAIT_S
        while True:
            now = await health(client)
            if now["cancelled"] == before["cancelled"] + 1:
                break
            assert time.monotonic() < deadline, now
            await asyncio.sleep(0.01)
        assert now["active"] == 3 and now["completed"] == before["completed"], now
        assert now["max_batch"] == 4, now  # they ran in one forward pass per step


def test_a_stream_cancelled_mid_batch_frees_its_slot(tiny_model: Path) -> None:
    with node_process(["--model", str(tiny_model), "--served-model-name", "tiny", "--free",
                       "--max-active", "16", "--no-fine-tuning", "--no-adapters"]) as url:
        asyncio.run(check_cancel(url.removesuffix("/v1")))
