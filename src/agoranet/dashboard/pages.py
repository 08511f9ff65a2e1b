"""The dashboards' pages and assets (packaged in ``agoranet/dashboard/static``, never a CDN)
and the routes every dashboard has: the page at ``/``, ``/login``, its JSON endpoints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from importlib.resources import files
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agoranet.api.secret_gate import SecretGate

__all__ = ["ASSETS", "DATA_PREFIX", "asset", "dashboard_routes"]

DATA_PREFIX: Final = "/agoranet/dashboard"
STATIC_PREFIX: Final = f"{DATA_PREFIX}/static"
ASSETS: Final = {
    "chart.umd.min.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "gateway.js": "text/javascript; charset=utf-8",
    "node.js": "text/javascript; charset=utf-8",
    "chart.js-LICENSE.md": "text/plain; charset=utf-8",
}
# Only this origin's scripts, styles and connections: nothing is fetched from elsewhere.
_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Data = Callable[[], Awaitable[Any]]


@cache
def asset(name: str) -> bytes:
    """A packaged file of ``agoranet/dashboard/static`` (KeyError for any other name)."""
    if name not in ASSETS and not name.endswith(".html"):
        raise KeyError(name)
    return files("agoranet.dashboard").joinpath("static", name).read_bytes()


def _page(name: str, title: str, status: int = 200) -> Response:
    html = asset(name).decode().replace("{{title}}", title)
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def dashboard_routes(gate: SecretGate, page: str, title: str,
                     data: Mapping[str, Data]) -> list[BaseRoute]:
    """``/`` (``page``, or with a 401 the login form for a browser, the JSON error for
    anything else), ``/login``, ``/logout``, the
    assets, and ``{DATA_PREFIX}/<name>.json`` for each of ``data``, all but the login form
    and the assets behind ``gate``."""

    async def index(request: Request) -> Response:
        if not gate.allows(request):  # a browser gets the login form, a program the JSON
            wants_html = "text/html" in request.headers.get("accept", "")
            return _page("login.html", title, status=401) if wants_html else gate.denied()
        return _page(page, title)

    async def login_form(request: Request) -> Response:
        return _page("login.html", title)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return JSONResponse({"error": {"message": f"no asset {name}", "type":
                                           "invalid_request_error", "param": None,
                                           "code": None}}, status_code=404)
        return Response(asset(name), media_type=ASSETS[name],
                        headers={"Cache-Control": "max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})

    def endpoint(produce: Data) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            return JSONResponse(await produce(), headers={"Cache-Control": "no-store"})
        return gate.require(handler)

    return [
        Route("/", index, methods=["GET"]),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", gate.login, methods=["POST"]),
        Route("/logout", gate.logout, methods=["POST"]),
        Route(STATIC_PREFIX + "/{name}", static, methods=["GET"]),
        *(Route(f"{DATA_PREFIX}/{name}.json", endpoint(produce), methods=["GET"])
          for name, produce in data.items()),
    ]
