"""Over real HTTP: a client hanging up on the gateway mid-answer releases the request's
budget reservation and lets go of the node, hedged or not.

The gateway and two nodes (the fake engine behind the real node app, stalled with
:mod:`agoranet.testing.stall` so the answer is still open when the client leaves) run
in-process under uvicorn.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from agoranet.config import GatewaySettings, NodeSettings
from agoranet.gateway.app import build_service, create_gateway_app
from agoranet.gateway.policy import Policy
from agoranet.gateway.service import GatewayService
from agoranet.node.app import create_app
from agoranet.testing.chaos import chaos_middleware
from fakes import FakeEngine
from helpers import served

pytestmark = pytest.mark.timeout(60)

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "one two"}],
        "max_tokens": 8, "stream": True}


def stalling_node(price: int, stall_after: int) -> Starlette:
    settings = NodeSettings(fine_tuning=False, free=True, price_in=price, price_out=price)
    return create_app(FakeEngine(), settings,
                      middleware=[chaos_middleware(f"stall:{stall_after}")])


@pytest.mark.parametrize(("hedge", "stalls"), [(None, (2, 2)), (50, (0, 2))],
                         ids=["plain", "after-a-hedge"])
async def test_a_client_hanging_up_mid_answer_releases_the_reservation(
    hedge: int | None, stalls: tuple[int, int], tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        # The cheaper node is asked first; with hedging it never answers and the other wins.
        cheap = await stack.enter_async_context(served(stalling_node(1_000, stalls[0])))
        dear = await stack.enter_async_context(served(stalling_node(2_000, stalls[1])))
        policy = Policy(prefer="cheapest", hedge_after_ms=hedge)
        service = build_service(GatewaySettings(nodes=[f"{cheap}/v1", f"{dear}/v1"],
                                                budget=1_000_000,
                                                spend_log=tmp_path / "spend.sqlite"), policy)
        stack.push_async_callback(_close, service)
        await service.directory.refresh()
        gateway = await stack.enter_async_context(served(create_gateway_app(service)))
        async with httpx.AsyncClient(timeout=30) as client, \
                client.stream("POST", f"{gateway}/v1/chat/completions", json=CHAT) as response:
            assert response.status_code == 200
            words = 0
            async for line in response.aiter_lines():
                words += '"content":"w' in line
                if words == 2:
                    break  # and hang up
        assert words == 2
        await _until(lambda: service.budget.reserved == 0)
        assert service.budget.reserved == 0
        assert service.budget.spent == service.spend.total() > 0
        assert all(n.failures == 0 for n in service.directory.nodes.values())


async def _until(condition: object, limit_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition() and loop.time() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.05)


async def _close(service: GatewayService) -> None:
    await service.client.aclose()
    service.spend.close()
    if service.directory.reputation is not None:
        service.directory.reputation.close()
