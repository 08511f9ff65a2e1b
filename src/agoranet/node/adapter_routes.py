"""``/v1/adapters``: upload a LoRA adapter to a node, and list one's own.

An adapter belongs to whoever uploaded it (or had it trained on this node): see
:mod:`agoranet.node.adapter_owners`. ``POST`` takes a bearer token to name the
owner, or makes one and returns it once as ``owner_token``; ``GET`` needs the
bearer token (401 without) and lists only that owner's adapters. Serving an
adapter needs only its id (its model name), as before; ``?public=true`` at upload
also lists it in the node's ``/v1/models``.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.engines.adapters import AdapterHost
from agoranet.errors import AdapterError, InvalidRequestError
from agoranet.node.adapter_owners import AdapterOwners, owner_id, owner_token
from agoranet.node.finetune_routes import owner_of
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


def _flag(text: str | None, name: str) -> bool:
    if text is None or text.lower() in ("false", "0"):
        return False
    if text.lower() in ("true", "1"):
        return True
    raise InvalidRequestError(f"{name} must be true or false, not {text[:40]!r}", param=name)


def adapter_routes(host: AdapterHost, base_name: str, max_bytes: int,
                   owners: AdapterOwners) -> list[Route]:
    @openai_errors
    async def upload(request: Request) -> Response:
        token = None
        if request.headers.get("authorization"):
            owner = owner_of(request)  # a malformed header is a 401, not an anonymous upload
        else:
            token = owner_token()
            owner = owner_id(token)
        public = _flag(request.query_params.get("public"), "public")
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
        await asyncio.to_thread(owners.add, adapter.id, owner)
        if public:
            await asyncio.to_thread(owners.make_public, adapter.id)
        card = adapter_card(adapter, base_name)
        if token is not None:
            card["owner_token"] = token  # shown once: the bearer token that lists it
        return JSONResponse(card, status_code=201)

    @openai_errors
    async def listing(request: Request) -> Response:
        mine = await asyncio.to_thread(owners.owned_by, owner_of(request))
        cards = [adapter_card(a, base_name) for a in host.list_adapters() if a.id in mine]
        return JSONResponse({"object": "list", "data": cards})

    return [
        Route("/v1/adapters", upload, methods=["POST"]),
        Route("/v1/adapters", listing, methods=["GET"]),
    ]
