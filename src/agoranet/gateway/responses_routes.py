"""``/v1/responses``: OpenAI's Responses API served over the network's chat completions.

``POST /v1/responses`` translates the request (:mod:`agoranet.gateway.responses_request`),
serves it as a chat completion through the gateway (ranked, paid, failed over and
budgeted exactly like ``/v1/chat/completions``, under the caller's key), and answers a
response object or its event stream (:mod:`agoranet.gateway.responses_output`). With
``store`` (the default) the response is kept for ``previous_response_id``,
``GET /v1/responses/{id}`` and ``DELETE /v1/responses/{id}``, visible to its key only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.api.handlers import openai_errors, read_json
from agoranet.api.streaming import EventStreamResponse
from agoranet.errors import InvalidRequestError
from agoranet.gateway.keyaccess import KeyAccess, authenticate
from agoranet.gateway.keystore import KeyStore
from agoranet.gateway.response_store import ResponseStore, StoredResponse
from agoranet.gateway.responses_output import ResponseDraft, stream_events
from agoranet.gateway.responses_request import to_chat
from agoranet.gateway.service import GatewayService

__all__ = ["responses_routes"]


def _owner(access: KeyAccess | None) -> str | None:
    return f"key:{access.key.id}" if access is not None else None


def responses_routes(service: GatewayService, keys: KeyStore | None,
                     store: ResponseStore) -> list[Route]:
    def access_of(request: Request) -> KeyAccess | None:
        return authenticate(keys, request) if keys is not None else None

    @openai_errors
    async def create(request: Request) -> Response:
        access = access_of(request)  # before the body
        body = await read_json(request)
        owner = _owner(access)
        previous = body.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise InvalidRequestError("previous_response_id must be a string",
                                      param="previous_response_id")
        history = store.history(previous, owner) if previous else []
        plan = to_chat(body, history)
        logprobs = bool(plan.body.get("logprobs"))
        draft = ResponseDraft(body)
        result, _ = await service.chat(plan.body, access)

        def keep() -> None:
            if body.get("store", True) and draft.status != "failed":
                store.put(StoredResponse(owner, draft.to_json(),
                                         [*plan.conversation, *draft.output_messages()]))

        if isinstance(result, dict):
            draft.add_chat_completion(result, logprobs)
            keep()
            return JSONResponse(draft.to_json())

        async def events() -> AsyncIterator[bytes]:
            async for frame in stream_events(draft, result, logprobs):
                yield frame
            keep()

        return EventStreamResponse(events())  # type: ignore[return-value]

    @openai_errors
    async def retrieve(request: Request) -> Response:
        stored = store.get(request.path_params["response_id"], _owner(access_of(request)))
        return JSONResponse(stored.response)

    @openai_errors
    async def delete(request: Request) -> Response:
        ident = request.path_params["response_id"]
        store.delete(ident, _owner(access_of(request)))
        deleted: dict[str, Any] = {"id": ident, "object": "response.deleted", "deleted": True}
        return JSONResponse(deleted)

    return [
        Route("/v1/responses", create, methods=["POST"]),
        Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
    ]
