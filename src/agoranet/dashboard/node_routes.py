"""The node's dashboard at ``/``, for its operator (the operator secret, never a buyer's)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from agoranet.api.secret_gate import SecretGate, matches
from agoranet.dashboard.node_view import NodeView
from agoranet.dashboard.pages import dashboard_routes

__all__ = ["mount_node_dashboard", "node_dashboard_routes"]


def node_dashboard_routes(view: NodeView, operator_secret: str) -> list[BaseRoute]:
    gate = SecretGate(matches(operator_secret), realm="node operator")

    async def data() -> dict[str, Any]:
        return await asyncio.to_thread(view.data)

    return dashboard_routes(gate, "node.html", "agoranet node", {"data": data})


def mount_node_dashboard(app: Starlette, view: NodeView, operator_secret: str) -> None:
    """Add the dashboard's routes to the node's ``app`` (before it serves)."""
    app.router.routes.extend(node_dashboard_routes(view, operator_secret))
