"""``/v1/adapters``: upload a LoRA adapter to a node, and list those it serves."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.engines.adapters import AdapterHost
from agoranet.errors import AdapterError, InvalidRequestError
from agoranet.node.routes import openai_errors
from agoranet.tuning.adapter import Adapter, adapter_model_name

__all__ = ["adapter_card", "adapter_routes"]


def adapter_card(adapter: Adapter, base_name: str) -> dict[str, object]:
    return {
        "object": "adapter",
        "id": adapter.id,
        "model": adapter_model_name(base_name, adapter.id),
        "base_model": adapter.manifest.base_model,
        "base_model_sha256": adapter.manifest.base_model_sha256,
        "rank": adapter.manifest.rank,
        "created": adapter.manifest.created,
    }


def adapter_routes(host: AdapterHost, base_name: str, max_bytes: int) -> list[Route]:
    @openai_errors
    async def upload(request: Request) -> Response:
        archive = await request.body()
        try:
            adapter = await asyncio.to_thread(host.add_adapter, archive, max_bytes)
        except AdapterError as exc:
            raise InvalidRequestError(str(exc)) from exc
        expected = request.query_params.get("id")
        if expected and expected != adapter.id:
            raise InvalidRequestError(
                f"the uploaded adapter's id is {adapter.id}, not the {expected} you named"
            )
        return JSONResponse(adapter_card(adapter, base_name), status_code=201)

    @openai_errors
    async def listing(request: Request) -> Response:
        cards = [adapter_card(a, base_name) for a in host.list_adapters()]
        return JSONResponse({"object": "list", "data": cards})

    return [
        Route("/v1/adapters", upload, methods=["POST"]),
        Route("/v1/adapters", listing, methods=["GET"]),
    ]
