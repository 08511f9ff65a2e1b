"""``/agoranet/tools``: the tools on offer, and buying one call, as the caller's key.

- ``GET /agoranet/tools``: each tool (name, schema hash, description, schemas, cheapest
  price) with its sellers (root URL, address, price, schemes, reputation score).
- ``POST /agoranet/tools/call`` with ``{"name", "arguments", "schema_sha256"?}``: one
  call bought from the cheapest seller that answers (:class:`~agoranet.gateway.
  tool_buying.ToolMarket`), paid under the key's budget chain and the gateway's budget;
  the answer says what it cost and carries the seller's signed receipt.

On a keyed gateway both need a key (``Authorization: Bearer``), and see and buy only
what its tool limits allow (:mod:`~agoranet.gateway.tool_limits`: a tool, seller or
price they rule out is a 403, nothing reserved or paid); errors are OpenAI's error JSON
(a call over budget: 402 ``budget_exceeded``, nothing paid).
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.api.handlers import openai_errors, read_json
from agoranet.errors import InvalidRequestError
from agoranet.gateway.budget import Budget, Reserver
from agoranet.gateway.keyaccess import authenticate
from agoranet.gateway.keystore import KeyStore
from agoranet.gateway.tool_buying import ToolMarket
from agoranet.registry.tool_offer import TOOL_NAME_PATTERN

__all__ = ["TOOLS_PATH", "tool_routes"]

TOOLS_PATH: Final = "/agoranet/tools"
_CALL_FIELDS: Final = frozenset({"name", "arguments", "schema_sha256"})


def _call_fields(body: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    unknown = sorted(set(body) - _CALL_FIELDS)
    if unknown:
        raise InvalidRequestError(f"unknown field(s) {', '.join(unknown)}; a tool call takes "
                                  f"{', '.join(sorted(_CALL_FIELDS))}", param=unknown[0])
    name = body.get("name")
    if not isinstance(name, str) or not re.fullmatch(TOOL_NAME_PATTERN, name):
        raise InvalidRequestError("'name' must be a tool's name", param="name")
    arguments = body.get("arguments", {})
    if not isinstance(arguments, dict):
        raise InvalidRequestError("'arguments' must be an object", param="arguments")
    schema = body.get("schema_sha256")
    if schema is not None and (not isinstance(schema, str) or
                               not re.fullmatch(r"[0-9a-f]{64}", schema)):
        raise InvalidRequestError("'schema_sha256' must be 64 lowercase hex digits",
                                  param="schema_sha256")
    return name, arguments, schema


def tool_routes(market: ToolMarket, budget: Budget, keys: KeyStore | None) -> list[Route]:
    """The routes over ``market``; with ``keys``, as the request's key."""

    @openai_errors
    async def listing(request: Request) -> Response:
        access = authenticate(keys, request) if keys is not None else None
        limits = access.tool_limits() if access is not None else None
        return JSONResponse({"object": "list", "data": market.view(limits)})

    @openai_errors
    async def call(request: Request) -> Response:
        access = authenticate(keys, request) if keys is not None else None  # before the body
        name, arguments, schema = _call_fields(await read_json(request))
        request_id = f"toolcall-{uuid.uuid4().hex}"
        reserver: Reserver = budget
        if access is not None:
            reserver = access.budget(budget, request_id, f"tool:{name}")
        answer = await market.call(name, arguments, reserver,
                                   key=access.name if access is not None else None,
                                   schema_sha256=schema, request_id=request_id,
                                   limits=access.tool_limits() if access is not None else None)
        return JSONResponse(answer)

    return [Route(TOOLS_PATH, listing, methods=["GET"]),
            Route(f"{TOOLS_PATH}/call", call, methods=["POST"])]
