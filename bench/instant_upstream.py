"""An OpenAI-shaped server that answers at once: the upstream for comparing proxies.

With a real model behind them, a proxy's throughput is bounded by the model;
in front of this stub it is bounded by the proxy alone. It answers
``POST /v1/chat/completions`` immediately with ``max_tokens`` (default 16)
one-word tokens, as JSON or as an SSE stream with a usage chunk, serves a free
agoranet offer for model ``tiny`` at ``/.well-known/agoranet`` (so the gateway
routes to it like to any free node), ``/v1/models`` and ``/health``.

Usage: python bench/instant_upstream.py --port PORT
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agoranet.registry.offer import ModelOffer, Offer, Price

MODEL = "tiny"
WORD = "word "


def _chunk(delta: dict[str, str], finish: str | None = None,
           usage: dict[str, int] | None = None) -> bytes:
    choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body: dict[str, object] = {"id": "chatcmpl-instant", "object": "chat.completion.chunk",
                               "created": int(time.time()), "model": MODEL, "choices": choices}
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def create_app() -> Starlette:
    offer = Offer(engine="instant", models=[ModelOffer(
        id=MODEL, context_length=4096, price=Price(input_per_million=0, output_per_million=0))])

    async def chat(request: Request) -> Response:
        body = json.loads(await request.body())
        tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
        if not body.get("stream"):
            return JSONResponse({
                "id": "chatcmpl-instant", "object": "chat.completion", "created": int(time.time()),
                "model": MODEL, "usage": usage, "choices": [{
                    "index": 0, "finish_reason": "length",
                    "message": {"role": "assistant", "content": WORD * tokens}}]})

        async def frames() -> AsyncIterator[bytes]:
            yield _chunk({"role": "assistant", "content": ""})
            for _ in range(tokens):
                yield _chunk({"content": WORD})
            yield _chunk({}, finish="length")
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _chunk({}, usage=usage)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    async def well_known(request: Request) -> Response:
        return Response(offer.model_dump_json(), media_type="application/json")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/.well-known/agoranet", well_known),
                             Route("/v1/models", models), Route("/health", health)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
