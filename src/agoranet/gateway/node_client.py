"""The gateway's HTTP client to nodes (and tool sellers): pooled, with the gateway's
timeouts, on :class:`~agoranet.api.lean_transport.LeanTransport` (plain-HTTP nodes over
httptools: about 0.3 ms less a request than httpx's own transport, which still serves
``https://`` nodes), and keeping no cookies: a node's ``Set-Cookie`` would otherwise
follow the gateway's requests to it (and cost parsing on every answer, on the relay's
hot path)."""

from __future__ import annotations

from http.cookiejar import CookieJar
from typing import Any

import httpx

from agoranet.api.lean_transport import LeanTransport

__all__ = ["node_client"]


class _NoCookies(CookieJar):
    """A cookie jar that keeps nothing."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return

    def set_cookie(self, cookie: Any) -> None:
        return


# An idle connection is dropped before a node drops it (after 5 s: agoranet's and uvicorn's
# default keep-alive), so a request is not sent on one the node is closing at that moment
# (it would fail, and count against the node).
_KEEP_ALIVE_S = 4.0


def node_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=5.0),
                             transport=LeanTransport(max_connections=512,
                                                     max_keepalive_connections=128,
                                                     keepalive_expiry=_KEEP_ALIVE_S),
                             cookies=_NoCookies())
