"""Web dashboards over the gateway's and the node's state (a shell over both).

``agoranet gateway`` and ``agoranet node`` add these routes to their apps; the pages and
their charting library are packaged here (``static/``), nothing is fetched at run time.
The secret in front of them is :class:`agoranet.api.secret_gate.SecretGate`.
"""

from agoranet.dashboard.gateway_routes import gateway_dashboard_routes, mount_gateway_dashboard
from agoranet.dashboard.node_routes import mount_node_dashboard, node_dashboard_routes
from agoranet.dashboard.node_view import NodeView

__all__ = ["NodeView", "gateway_dashboard_routes", "mount_gateway_dashboard",
           "mount_node_dashboard", "node_dashboard_routes"]
