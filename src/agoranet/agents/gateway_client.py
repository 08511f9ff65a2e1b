"""A thin async client of the gateway's HTTP API, acting as one gateway key.

Every answer that is not a 2xx becomes a :class:`GatewayCallError` carrying the
gateway's own plain message (its OpenAI error JSON), its status and code; a gateway
that does not answer becomes one too. Nothing else is raised.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from agoranet.errors import GatewayCallError

__all__ = ["GatewayClient"]


class GatewayClient:
    """Calls on the gateway through ``http`` (its base URL and key already set)."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            reply = await self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise GatewayCallError(f"the gateway at {self.http.base_url} did not answer "
                                   f"({type(exc).__name__}): is `agoranet gateway` running?",
                                   status=0) from exc
        try:
            body = reply.json()
        except ValueError:
            body = None
        if reply.is_success and isinstance(body, dict):
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            code = error.get("code") or error.get("type")
            raise GatewayCallError(error["message"], status=reply.status_code,
                                   code=str(code) if code else None)
        raise GatewayCallError(f"the gateway answered {reply.status_code} without a "
                               "readable body", status=reply.status_code)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", "/v1/chat/completions", json=body)

    async def models(self) -> list[dict[str, Any]]:
        data = (await self.call("GET", "/agoranet/models"))["data"]
        return list(data)

    async def budget(self) -> dict[str, Any]:
        return await self.call("GET", "/agoranet/budget")

    async def create_key(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", "/agoranet/keys", json=body)

    async def fine_tune(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.call("POST", "/agoranet/fine_tuning/jobs", json=body)

    async def tools(self) -> list[dict[str, Any]]:
        """The paid tools on offer to this key (``GET /agoranet/tools``)."""
        return list((await self.call("GET", "/agoranet/tools"))["data"])

    async def call_tool(self, body: dict[str, Any]) -> dict[str, Any]:
        """Buy one call of a paid tool (``POST /agoranet/tools/call``)."""
        return await self.call("POST", "/agoranet/tools/call", json=body)

    async def fine_tune_status(self, job_id: str, node: str) -> dict[str, Any]:
        return await self.call("GET", f"/agoranet/fine_tuning/jobs/{quote(job_id, safe='')}",
                               params={"node": node})
