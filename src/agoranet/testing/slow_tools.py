"""A paid tool that takes its time, for tests of calls at once to one seller.

``agoranet tools serve agoranet.testing.slow_tools:tools`` sells ``wait`` (1,000 base
units a call): it sleeps ``seconds`` (at most 5) and answers its ``tag``, so calls sent
together are still running together when the next one arrives.
"""

from __future__ import annotations

import asyncio
from typing import Final

from pydantic import Field

from agoranet.tools import ToolServer

__all__ = ["WAIT_PRICE", "tools"]

WAIT_PRICE: Final = 1_000

tools = ToolServer("slow-tools")


@tools.tool(price=WAIT_PRICE)
async def wait(tag: str, seconds: float = Field(default=0.5, ge=0, le=5)) -> str:
    """Sleeps, then answers the tag."""
    await asyncio.sleep(seconds)
    return tag
