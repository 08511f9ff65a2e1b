"""The gateway's dashboard at ``/``: its owner's (the owner key, by
:func:`agoranet.gateway.owner_gate.owner_gate`), or open on an ``--open`` gateway, which
has no keys at all."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from agoranet.dashboard.gateway_view import GatewayView
from agoranet.dashboard.pages import dashboard_routes
from agoranet.gateway.keystore import KeyStore
from agoranet.gateway.owner_gate import owner_gate
from agoranet.gateway.service import GatewayService

__all__ = ["gateway_dashboard_routes", "mount_gateway_dashboard"]


def gateway_dashboard_routes(service: GatewayService, keys: KeyStore | None,
                             spend_log: Path) -> list[BaseRoute]:
    view = GatewayView(service, spend_log)
    return dashboard_routes(owner_gate(keys), "gateway.html", "agoranet gateway",
                            {"data": view.data, "channels": view.channels})


def mount_gateway_dashboard(app: Starlette, service: GatewayService, keys: KeyStore | None,
                            spend_log: Path) -> None:
    """Add the dashboard's routes to the gateway's ``app`` (before it serves)."""
    app.router.routes.extend(gateway_dashboard_routes(service, keys, spend_log))
