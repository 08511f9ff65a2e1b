"""The floor under any gateway built on this stack: a bare streaming proxy, no logic.

Starlette + uvicorn in front, an httpx client on agoranet's ``LeanTransport``
behind, exactly the parts the agoranet gateway uses, and nothing else: no ranking,
budget, payment, receipt checks, spend log or failover. ``bench/gateway.py`` runs it beside the gateway
so the gateway's own cost reads as "gateway minus bare proxy" on any machine.

Usage: python bench/bare_proxy.py UPSTREAM_V1_URL --port PORT
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agoranet.api.lean_transport import LeanTransport


def create_app(upstream: str) -> Starlette:
    client = httpx.AsyncClient(base_url=upstream.rstrip("/"), timeout=120,
                               transport=LeanTransport(max_connections=256,
                                                       max_keepalive_connections=256))

    async def chat(request: Request) -> Response:
        body = await request.body()
        headers = {"content-type": "application/json"}
        outgoing = client.build_request("POST", "/chat/completions", content=body, headers=headers)
        upstream_response = await client.send(outgoing, stream=True)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream_response.aiter_raw():
                    yield chunk
            finally:
                await upstream_response.aclose()

        return StreamingResponse(relay(), status_code=upstream_response.status_code,
                                 media_type=upstream_response.headers.get("content-type"))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/health", health)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstream")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(args.upstream), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
