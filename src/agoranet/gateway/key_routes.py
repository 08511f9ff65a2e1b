"""``/agoranet/keys``: a key mints, lists, tops up, rotates and revokes keys in its own
subtree.

Every route needs a valid key (``Authorization: Bearer``) and acts only within that
key's subtree: a child's budget is carved out of what the caller has left, its models
and policy apply on top of the caller's. Amounts are integers in base units. A new
key's secret is in the creation answer and nowhere else, ever; a rotated key's new
secret likewise in the rotation's answer. The owner key is rotated by the CLI only
(``agoranet keys rotate owner``), which writes its file.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.api.handlers import openai_errors, parse_json_object, read_json
from agoranet.errors import InvalidRequestError, PermissionDeniedError
from agoranet.gateway.keyaccess import authenticate, check_key_policy
from agoranet.gateway.keystore import MAX_AMOUNT, MAX_GRACE_S, OWNER, KeyRecord, KeyStore

__all__ = ["key_json", "key_routes"]

_CREATE_FIELDS = frozenset({"name", "budget", "per_day", "models", "policy", "expires_in_s",
                            "parent"})


def key_json(key: KeyRecord) -> dict[str, Any]:
    """A key as the API and ``keys list --json`` show it (never its secret)."""
    return {"name": key.name, "parent": key.parent, "budget": key.budget,
            "per_day": key.per_day, "spent": key.spent, "reserved": key.reserved,
            "remaining": key.remaining, "spent_today": key.day_spent, "models": key.models,
            "policy": key.policy, "expires": key.expires, "status": key.state(),
            "created": key.created}


def _amount(body: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if type(value) is not int or not 0 <= value <= MAX_AMOUNT:
        raise InvalidRequestError(f"'{name}' must be a whole number of base units, 0 to "
                                  f"{MAX_AMOUNT}", param=name)
    return value


def _models(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or \
            not all(isinstance(p, str) and 0 < len(p) <= 200 for p in value) or len(value) > 64:
        raise InvalidRequestError("'models' must be a list of 1 to 64 glob patterns",
                                  param="models")
    return list(value)


def _expires(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not 0 < value <= 100 * 365 * 86400:
        raise InvalidRequestError("'expires_in_s' must be seconds, more than 0",
                                  param="expires_in_s")
    return time.time() + float(value)


def _grace(body: dict[str, Any]) -> float:
    unknown = sorted(set(body) - {"grace_s"})
    if unknown:
        raise InvalidRequestError(f"unknown field(s): {', '.join(unknown)} (the body is "
                                  "empty or {\"grace_s\": seconds})", param=unknown[0])
    value = body.get("grace_s", 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not 0 <= value <= MAX_GRACE_S:
        raise InvalidRequestError(f"'grace_s' must be 0 to {MAX_GRACE_S} seconds",
                                  param="grace_s")
    return float(value)


def key_routes(store: KeyStore) -> list[Route]:
    """The routes, over ``store``."""

    @openai_errors
    async def create(request: Request) -> Response:
        caller = authenticate(store, request).key
        body = await read_json(request)
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            raise InvalidRequestError(f"unknown field(s): {', '.join(unknown)}",
                                      param=unknown[0])
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidRequestError("'name' must be a string", param="name")
        parent = body.get("parent", caller.name)
        if not isinstance(parent, str):
            raise InvalidRequestError("'parent' must be a key's name", param="parent")
        new = store.create(name, parent=parent, within=caller.name,
                           budget=_amount(body, "budget", required=True),
                           per_day=_amount(body, "per_day", required=False),
                           models=_models(body.get("models")),
                           policy=check_key_policy(body.get("policy")),
                           expires=_expires(body.get("expires_in_s")))
        return JSONResponse({**key_json(new.record), "key": new.secret}, status_code=201)

    @openai_errors
    async def listing(request: Request) -> Response:
        caller = authenticate(store, request).key
        return JSONResponse({"object": "list",
                             "data": [key_json(k) for k in store.subtree(caller.name)]})

    def _within(caller: str, name: str) -> KeyRecord:
        for key in store.subtree(caller):
            if key.name == name:
                return key
        raise PermissionDeniedError(f"key '{name}' is not '{caller}' or one of its "
                                    "descendants", param="name")

    @openai_errors
    async def show(request: Request) -> Response:
        caller = authenticate(store, request).key
        return JSONResponse(key_json(_within(caller.name, request.path_params["name"])))

    @openai_errors
    async def top_up(request: Request) -> Response:
        caller = authenticate(store, request).key
        body = await read_json(request)
        if set(body) != {"amount"}:
            raise InvalidRequestError("the body is {\"amount\": base units}", param="amount")
        amount = _amount(body, "amount", required=True) or 0
        key = store.top_up(request.path_params["name"], amount, within=caller.name)
        return JSONResponse(key_json(key))

    @openai_errors
    async def rotate(request: Request) -> Response:
        caller = authenticate(store, request).key
        raw = await request.body()
        grace_s = _grace(parse_json_object(raw) if raw.strip() else {})
        name = request.path_params["name"]
        if name == OWNER:
            raise InvalidRequestError("the owner key is rotated with 'agoranet keys rotate "
                                      "owner', which also writes its file", param="name")
        new = store.rotate(name, grace_s=grace_s, within=caller.name)
        return JSONResponse({**key_json(new.record), "key": new.secret})

    @openai_errors
    async def revoke(request: Request) -> Response:
        caller = authenticate(store, request).key
        revoked = store.revoke(request.path_params["name"], within=caller.name)
        return JSONResponse({"revoked": revoked})

    return [
        Route("/agoranet/keys", create, methods=["POST"]),
        Route("/agoranet/keys", listing, methods=["GET"]),
        Route("/agoranet/keys/{name}", show, methods=["GET"]),
        Route("/agoranet/keys/{name}/top_up", top_up, methods=["POST"]),
        Route("/agoranet/keys/{name}/rotate", rotate, methods=["POST"]),
        Route("/agoranet/keys/{name}/revoke", revoke, methods=["POST"]),
    ]
