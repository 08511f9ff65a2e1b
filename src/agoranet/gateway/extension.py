"""What a shell above the gateway may add to its app: routes, run in its lifespan.

The agents' MCP endpoint (:mod:`agoranet.agents.mcp_http`) is one: it calls the gateway's
own routes in process, so it is bound to the finished app, and its session manager runs
while the app does. The gateway knows only this protocol, so its dependencies keep
pointing down (DESIGN.md: agents is a shell over the gateway).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from starlette.routing import BaseRoute
from starlette.types import ASGIApp

__all__ = ["GatewayExtension"]


class GatewayExtension(Protocol):
    """Routes added to the gateway's app, running while it does."""

    def routes(self) -> Sequence[BaseRoute]:
        """The routes to mount beside the gateway's own."""
        ...

    def running(self) -> AbstractAsyncContextManager[None]:
        """Entered in the app's lifespan, after the gateway's directory has started."""
        ...

    def bind(self, app: ASGIApp) -> None:
        """The finished app (for calling the gateway in process)."""
        ...
