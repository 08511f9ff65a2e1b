"""``GET /openapi.json``: an OpenAPI 3.1 document of the routes an app really serves.

The paths come from the app's own routing table at request time, so a route
cannot be served undocumented; what each one takes and returns comes from the
pydantic wire types (:mod:`agoranet.api.types`) through :data:`OPERATIONS`, which
an app extends with its own (the node's offer, the gateway's policy field). A
route missing from the table is still listed, with a generic description and a
warning in the log (the tests insist there are none).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agoranet.api.embeddings import EmbeddingList, EmbeddingRequest
from agoranet.api.responses_types import (
    ResponseDeleted,
    ResponseObject,
    ResponseRequest,
    ResponseStreamEvent,
)
from agoranet.api.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChunk,
    CompletionRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
)

__all__ = [
    "OPENAPI_PATH",
    "OPERATIONS",
    "ErrorResponse",
    "Operation",
    "generic_routes",
    "openapi_document",
    "openapi_route",
]

logger = logging.getLogger(__name__)

OPENAPI_PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"
PAYMENT_HEADER = "PAYMENT-SIGNATURE"

Body = Literal["json", "binary", "multipart"]
Schema = type[BaseModel] | dict[str, Any] | None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error JSON, the body of every 4xx and 5xx (a 402 adds ``x402``)."""

    model_config = ConfigDict(extra="allow")

    error: ErrorDetail


class TokenCount(BaseModel):
    """``POST /tokenize``'s answer (vLLM's shape)."""

    count: int
    max_model_len: int


@dataclass(frozen=True)
class Operation:
    """What one method of one path takes and returns."""

    summary: str
    request: Schema = None
    body: Body = "json"
    response: Schema = None
    status: int = 200
    stream: type[BaseModel] | None = None  # ``"stream": true`` answers SSE of these
    media_type: str = "application/json"
    query: tuple[str, ...] = ()
    bearer: bool = False  # OpenAI's ``Authorization: Bearer`` names the owner
    errors: tuple[int, ...] = (400, 404, 413, 429)
    # request fields whose schema an app replaces (the gateway's ``agoranet`` policy)
    fields: Mapping[str, type[BaseModel]] = field(default_factory=dict)


_OBJECT: dict[str, Any] = {"type": "object"}
_INFERENCE_ERRORS = (400, 404, 409, 413, 429, 503)
_JOB = {"type": "object", "description": "an OpenAI fine_tuning.job object"}
_JOB_REQUEST = {
    "type": "object", "required": ["model", "training_file"],
    "properties": {"model": {"type": "string"}, "training_file": {"type": "string"},
                   "seed": {"type": ["integer", "null"]},
                   "hyperparameters": {"type": "object"}, "method": {"type": "object"}},
}
_LIST = {"type": "object", "properties": {"object": {"const": "list"},
                                          "data": {"type": "array", "items": _OBJECT}}}

OPERATIONS: Mapping[tuple[str, str], Operation] = {
    ("POST", "/v1/chat/completions"): Operation(
        "Create a chat completion (OpenAI)", ChatCompletionRequest, response=ChatCompletion,
        stream=ChatCompletionChunk, errors=_INFERENCE_ERRORS),
    ("POST", "/v1/completions"): Operation(
        "Create a text completion (OpenAI)", CompletionRequest, response=Completion,
        stream=CompletionChunk, errors=_INFERENCE_ERRORS),
    ("POST", "/v1/embeddings"): Operation(
        "Create embeddings (OpenAI): charged their input tokens at the model's input price",
        EmbeddingRequest, response=EmbeddingList, errors=_INFERENCE_ERRORS),
    ("GET", "/v1/models"): Operation("List the models served", response=ModelList, errors=()),
    ("GET", "/v1/models/{model_id}"): Operation("One model served (OpenAI)", response=ModelCard,
                                                errors=(404,)),
    ("POST", "/v1/responses"): Operation(
        "Create a model response (OpenAI's Responses API; served over chat completions)",
        ResponseRequest, response=ResponseObject, stream=ResponseStreamEvent,
        errors=_INFERENCE_ERRORS),
    ("GET", "/v1/responses/{response_id}"): Operation("A stored response",
                                                      response=ResponseObject, errors=(404,)),
    ("DELETE", "/v1/responses/{response_id}"): Operation("Forget a stored response",
                                                         response=ResponseDeleted,
                                                         errors=(404,)),
    ("POST", "/tokenize"): Operation("Count a prompt's tokens (vLLM)", TokenizeRequest,
                                     response=TokenCount),
    ("GET", "/health"): Operation("Liveness and engine statistics", response=_OBJECT, errors=()),
    ("GET", OPENAPI_PATH): Operation("This document", response=_OBJECT, errors=()),
    ("GET", "/.well-known/agoranet"): Operation("The node's signed offer", response=_OBJECT,
                                                errors=()),
    ("GET", "/agoranet/nodes"): Operation("The gateway's nodes, budget and audits",
                                          response=_OBJECT, errors=()),
    ("GET", "/metrics"): Operation(
        "Prometheus metrics (text format), for the node's operator or the gateway's owner",
        response={"type": "string"}, media_type="text/plain", bearer=True, errors=(401,)),
    ("POST", "/v1/adapters"): Operation(
        "Upload a LoRA adapter (a tar archive)", {"type": "string", "format": "binary"},
        body="binary", response=_OBJECT, status=201, query=("id", "public", "private"),
        errors=(400, 401, 413)),
    ("GET", "/v1/adapters"): Operation("List the caller's own adapters", response=_LIST,
                                       bearer=True, errors=(401,)),
    ("POST", "/v1/adapters/{adapter_id}"): Operation(
        "Mark one's own adapter public or private",
        {"type": "object", "additionalProperties": False,
         "properties": {"public": {"type": "boolean"}, "private": {"type": "boolean"}}},
        response=_OBJECT, bearer=True, errors=(400, 401, 404)),
    ("POST", "/v1/files"): Operation(
        "Upload a training file (OpenAI)",
        {"type": "object", "required": ["file", "purpose"],
         "properties": {"file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string"}}},
        body="multipart", response=_OBJECT, bearer=True, errors=(400, 401, 413)),
    ("GET", "/v1/files/{file_id}"): Operation("A training file (OpenAI)", response=_OBJECT,
                                              bearer=True, errors=(401, 404)),
    ("POST", "/v1/fine_tuning/jobs"): Operation("Create a fine-tuning job (OpenAI)",
                                                _JOB_REQUEST, response=_JOB, bearer=True,
                                                errors=(400, 401, 404)),
    ("GET", "/v1/fine_tuning/jobs"): Operation("List fine-tuning jobs", response=_LIST,
                                               bearer=True, errors=(401,)),
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): Operation("A fine-tuning job", response=_JOB,
                                                        bearer=True, errors=(401, 404)),
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): Operation(
        "Cancel a fine-tuning job", response=_JOB, bearer=True, errors=(400, 401, 404)),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): Operation(
        "A fine-tuning job's events", response=_LIST, bearer=True, errors=(401, 404)),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/receipt"): Operation(
        "What a fine-tuning job was charged, and its payment", response=_OBJECT, bearer=True,
        errors=(401, 404)),
    ("GET", "/v1/fine_tuning/jobs/{job_id}/adapter"): Operation(
        "Download a finished job's adapter", response={"type": "string", "format": "binary"},
        media_type="application/x-tar", bearer=True, errors=(400, 401, 404)),
    ("POST", "/agoranet/keys"): Operation(
        "Create a gateway key under the caller's",
        {"type": "object", "required": ["name", "budget"],
         "properties": {"name": {"type": "string"}, "parent": {"type": "string"},
                        "budget": {"type": "integer", "minimum": 0},
                        "per_day": {"type": ["integer", "null"], "minimum": 0},
                        "models": {"type": ["array", "null"], "items": {"type": "string"}},
                        "policy": {"type": ["object", "null"]},
                        "expires_in_s": {"type": ["number", "null"]}}},
        response=_OBJECT, status=201, bearer=True, errors=(400, 401, 403, 409)),
    ("GET", "/agoranet/keys"): Operation("The caller's key and those under it",
                                         response=_LIST, bearer=True, errors=(401,)),
    ("GET", "/agoranet/keys/{name}"): Operation("A key's budget, spend and expiry",
                                                response=_OBJECT, bearer=True,
                                                errors=(401, 403, 404)),
    ("POST", "/agoranet/keys/{name}/top_up"): Operation(
        "Raise a key's budget",
        {"type": "object", "required": ["amount"],
         "properties": {"amount": {"type": "integer", "minimum": 0}}},
        response=_OBJECT, bearer=True, errors=(400, 401, 403, 404)),
    ("POST", "/agoranet/keys/{name}/rotate"): Operation(
        "Issue a key a new secret (same budget, spend and keys under it); the old one stops "
        "at once or after grace_s seconds",
        {"type": "object", "additionalProperties": False,
         "properties": {"grace_s": {"type": "number", "minimum": 0}}},
        response=_OBJECT, bearer=True, errors=(400, 401, 403, 404)),
    ("POST", "/agoranet/keys/{name}/revoke"): Operation(
        "Revoke a key and every key under it", response=_OBJECT, bearer=True,
        errors=(401, 403, 404)),
    # What agents ask beyond OpenAI's routes (gateway.agent_routes), and the MCP endpoint;
    # a keyed gateway marks them bearer (gateway.app).
    ("GET", "/agoranet/budget"): Operation(
        "The caller's key: spent, reserved, remaining and what it can spend now",
        response=_OBJECT, errors=(401,)),
    ("GET", "/agoranet/models"): Operation(
        "Models with their cheapest price, node count and capabilities", response=_LIST,
        errors=(401,)),
    ("POST", "/agoranet/fine_tuning/jobs"): Operation(
        "Start a LoRA job on a node from chat examples (paid within the key's budget "
        "where the node charges for training)",
        {"type": "object", "required": ["model", "examples"],
         "properties": {"model": {"type": "string"},
                        "examples": {"type": "array", "items": _OBJECT},
                        "epochs": {"type": ["integer", "null"], "minimum": 1},
                        "seed": {"type": ["integer", "null"]}}},
        response=_OBJECT, errors=(400, 401, 402, 403, 404, 429, 503)),
    ("GET", "/agoranet/fine_tuning/jobs/{job_id}"): Operation(
        "A job started through the gateway, from its node", response=_OBJECT,
        query=("node",), errors=(400, 401, 503)),
    # Paid tools sold on the market (gateway.tool_routes), bought within the key's budget.
    ("GET", "/agoranet/tools"): Operation(
        "Paid tools on offer: each (name, schema hash, schemas, price) with its sellers",
        response=_LIST, errors=(401,)),
    ("POST", "/agoranet/tools/call"): Operation(
        "Buy one call of a paid tool from the cheapest seller that answers, within the "
        "key's budget; the result, its seller, its cost and the seller's signed receipt",
        {"type": "object", "required": ["name"],
         "properties": {"name": {"type": "string"}, "arguments": _OBJECT,
                        "schema_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}},
        response=_OBJECT, errors=(400, 401, 402, 404, 429, 502)),
    ("POST", "/mcp"): Operation("MCP over streamable HTTP: a JSON-RPC message (the MCP tools)",
                                _OBJECT, response=_OBJECT, errors=(400, 401, 404, 406)),
    ("GET", "/mcp"): Operation("MCP over streamable HTTP: the server's event stream",
                               response=_OBJECT, media_type="text/event-stream",
                               errors=(400, 401, 404, 405, 406)),
    ("DELETE", "/mcp"): Operation("MCP over streamable HTTP: end a session", response=_OBJECT,
                                  errors=(400, 401, 404)),
}

_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def generic_routes(routes: Collection[BaseRoute]) -> list[tuple[str, str]]:
    """The ``(method, path)`` pairs of ``routes`` that :data:`OPERATIONS` does not describe."""
    return [(m, p) for m, p, _ in _served(routes) if (m, p) not in OPERATIONS]


def openapi_document(routes: Collection[BaseRoute], *, title: str, version: str,
                     description: str = "",
                     operations: Mapping[tuple[str, str], Operation] | None = None,
                     paid_paths: Collection[str] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``: :data:`OPERATIONS` with ``operations``
    over them; ``paid_paths`` take x402 payment (a 402 without it)."""
    table = {**OPERATIONS, **(operations or {})}
    served = [(m, p, params, _operation(table, m, p)) for m, p, params in _served(routes)]
    keyed: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (ErrorResponse, "serialization")]
    for _, _, _, op in served:
        for model, mode in _models(op):
            keyed.append((model, mode))
    refs, defs = models_json_schema(list(dict.fromkeys(keyed)),
                                    ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))

    def schema_of(value: Schema, mode: Literal["validation", "serialization"]) -> dict[str, Any]:
        if value is None:
            return dict(_OBJECT)
        if isinstance(value, dict):
            return value
        return dict(refs[(value, mode)])

    paths: dict[str, dict[str, Any]] = {}
    for method, path, params, op in served:
        paths.setdefault(path, {})[method.lower()] = _path_item(
            method, path, op, params, path in paid_paths, schema_of, schemas)
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    security: dict[str, Any] = {}
    if any(path in paid_paths for _, path, _, _ in served):
        security["x402"] = {
            "type": "apiKey", "in": "header", "name": PAYMENT_HEADER,
            "description": "an x402 v2 payment payload, base64 JSON (batch-settlement "
                           "voucher or exact EIP-3009 authorization); without one the "
                           "answer is 402 with the PAYMENT-REQUIRED requirements"}
    if any(op.bearer for _, _, _, op in served):
        security["bearer"] = {"type": "http", "scheme": "bearer",
                              "description": "OpenAI's API key: at a gateway one of its keys; "
                                             "at a node any secret string, which names the "
                                             "owner of files and jobs"}
    if security:
        document["components"]["securitySchemes"] = security
    return document


def openapi_route(*, title: str, version: str, description: str = "",
                  operations: Mapping[tuple[str, str], Operation] | None = None,
                  paid_paths: Collection[str] = ()) -> Route:
    """``GET /openapi.json`` for the app it is mounted in (built once, on first request)."""
    cached: list[bytes] = []

    async def endpoint(request: Request) -> Response:
        if not cached:
            document = openapi_document(request.app.routes, title=title, version=version,
                                        description=description, operations=operations,
                                        paid_paths=paid_paths)
            cached.append(bytes(JSONResponse(document).body))
        return Response(cached[0], media_type="application/json")

    return Route(OPENAPI_PATH, endpoint, methods=["GET"])


def _served(routes: Collection[BaseRoute]) -> list[tuple[str, str, list[str]]]:
    found = []
    for route in routes:
        if not isinstance(route, Route):
            continue
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", route.path)
        params = _PARAM.findall(route.path)
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                found.append((method, path, params))
    return found


def _operation(table: Mapping[tuple[str, str], Operation], method: str, path: str) -> Operation:
    found = table.get((method, path))
    if found is None:
        logger.warning("openapi: %s %s has no description", method, path)
        return Operation(f"{method} {path}", None if method == "GET" else _OBJECT)
    return found


def _models(op: Operation) -> list[tuple[type[BaseModel], Literal["validation",
                                                                    "serialization"]]]:
    found: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = []
    if isinstance(op.request, type):
        found.append((op.request, "validation"))
    found += [(model, "validation") for model in op.fields.values()]
    found += [(m, "serialization") for m in (op.response, op.stream) if isinstance(m, type)]
    return found


def _path_item(method: str, path: str, op: Operation, params: list[str], paid: bool, schema_of: Any,
               schemas: dict[str, Any]) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    content: dict[str, Any] = {op.media_type: {"schema": schema_of(op.response, "serialization")}}
    if op.stream is not None:
        chunk = schema_of(op.stream, "serialization")
        content["text/event-stream"] = {"schema": {
            "type": "string",
            "description": "with \"stream\": true: server-sent events, each `data: <JSON>` "
                           "(one chunk, or an error object), ending with `data: [DONE]`",
            "contentMediaType": "text/event-stream", "x-event": chunk}}
    responses: dict[str, Any] = {str(op.status): {"description": "success", "content": content}}
    for status in sorted({*op.errors, *((402,) if paid else ()), 405, 500}):
        responses[str(status)] = {"description": _REASONS.get(status, "error"),
                                  "content": error}
    if paid:
        responses["402"]["headers"] = {"PAYMENT-REQUIRED": {
            "description": "the x402 payment requirements, base64 JSON",
            "schema": {"type": "string"}}}
        responses[str(op.status)]["headers"] = {"PAYMENT-RESPONSE": {
            "description": "the signed receipt, base64 JSON (in a final SSE event for a "
                           "stream)", "schema": {"type": "string"}}}
    item: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(method, path),
                            "responses": responses}
    parameters = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in params]
    parameters += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
                   for q in op.query]
    if parameters:
        item["parameters"] = parameters
    if op.request is not None:
        body = schema_of(op.request, "validation")
        if op.fields:
            body = _with_fields(body, op.fields, schema_of, schemas)
        media = {"json": "application/json", "binary": "application/octet-stream",
                 "multipart": "multipart/form-data"}[op.body]
        item["requestBody"] = {"required": True, "content": {media: {"schema": body}}}
    needs: dict[str, list[str]] = {}  # both, when a route takes both
    if paid:
        needs["x402"] = []
    if op.bearer:
        needs["bearer"] = []
    if needs:
        item["security"] = [needs]
    return item


def _with_fields(body: dict[str, Any], fields: Mapping[str, type[BaseModel]], schema_of: Any,
                 schemas: dict[str, Any]) -> dict[str, Any]:
    """``body`` (a reference) as a copy whose named properties have other schemas."""
    name = str(body["$ref"]).rsplit("/", 1)[-1]
    copy = {**schemas[name], "properties": dict(schemas[name].get("properties", {}))}
    for key, model in fields.items():
        copy["properties"][key] = {"anyOf": [schema_of(model, "validation"), {"type": "null"}]}
    schemas[f"{name}-Gateway"] = copy
    return {"$ref": f"#/components/schemas/{name}-Gateway"}


def _operation_id(method: str, path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{method} {path}").strip("_").lower()


_REASONS = {400: "invalid request", 401: "no API key", 402: "payment required",
            404: "not found", 405: "method not allowed", 409: "already charged",
            413: "too large", 429: "overloaded", 500: "internal error",
            503: "unavailable"}
