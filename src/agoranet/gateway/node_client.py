"""The gateway's HTTP client to nodes (and tool sellers): pooled, with the gateway's
timeouts, on :class:`~agoranet.api.lean_transport.LeanTransport` (plain-HTTP nodes over
httptools: about 0.3 ms less a request than httpx's own transport, which still serves
``https://`` nodes), and keeping no cookies: a node's ``Set-Cookie`` would otherwise
follow the gateway's requests to it. Its cookies are none and never will be
(:class:`NodeClient`), so httpx does not read an answer's headers for cookies to keep:
that reading built a ``urllib`` request for every answer, on the relay's hot path (about
half of what ``httpx.AsyncClient.send`` costs a request)."""

from __future__ import annotations

from typing import Any

import httpx

from agoranet.api.lean_transport import LeanTransport

__all__ = ["NodeClient", "node_client"]


class _NoCookies(httpx.Cookies):
    """Cookies that are none and take none."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        return

    def __setitem__(self, name: str, value: str) -> None:
        return

    def update(self, cookies: Any = None) -> None:  # type: ignore[override]
        return


class NodeClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` that keeps no cookies."""

    _none = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._none

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        return


# An idle connection is dropped before a node drops it (after 5 s: agoranet's and uvicorn's
# default keep-alive), so a request is not sent on one the node is closing at that moment
# (it would fail, and count against the node).
_KEEP_ALIVE_S = 4.0


def node_client() -> httpx.AsyncClient:
    return NodeClient(timeout=httpx.Timeout(600.0, connect=5.0),
                      transport=LeanTransport(max_connections=512,
                                              max_keepalive_connections=128,
                                              keepalive_expiry=_KEEP_ALIVE_S))
