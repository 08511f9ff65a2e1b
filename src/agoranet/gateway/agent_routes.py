"""``/agoranet/budget``, ``/agoranet/models`` and ``/agoranet/fine_tuning/jobs``: what an
agent (the MCP tools, or any client) asks the gateway beyond OpenAI's routes.

Each acts with the caller's key (``Authorization: Bearer``) on a keyed gateway, and
with the owner's authority on an open one:

- ``GET /agoranet/budget``: the key's own spend, reserved and remaining, and what it
  can spend now: the least any key of its chain, or the global budget, has left.
- ``GET /agoranet/models``: the models the key may use, each with its cheapest price,
  how many nodes serve it and what at least one of them offers (``capabilities``: the
  engine's, such as ``tools``, then ``adapters``, ``commitments``, ``fine_tuning``, and
  ``free_fine_tuning`` where a node trains it for free).
- ``POST /agoranet/fine_tuning/jobs``: a LoRA job on a node that fine-tunes the model,
  from chat examples (``{"model", "examples": [{"messages": [...]}, ...], "epochs"?,
  "seed"?}``); ``GET /agoranet/fine_tuning/jobs/{id}?node=URL`` follows it.
  The node knows the job's owner by a token derived from the caller's key (never the
  key itself), so only that key sees its jobs. A node that trains for free is tried
  first; a gateway with a wallet pays a node that charges for training, the job's
  maximum reserved against the key's budget chain and the global budget, and settled
  at its receipt once the job has ended (:mod:`agoranet.gateway.job_paying`); a
  gateway without one refuses a model only paid nodes fine-tune with a 400.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from typing import Any, Final

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.api.handlers import openai_errors, read_json
from agoranet.errors import InvalidRequestError, ModelNotFoundError, UpstreamError
from agoranet.gateway.budget import Reserver
from agoranet.gateway.directory import normalise_url
from agoranet.gateway.job_paying import JobPayments
from agoranet.gateway.keyaccess import KeyAccess, authenticate
from agoranet.gateway.keystore import KeyStore
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.service import GatewayService

__all__ = ["AGENT_PATHS", "MCP_PATH", "agent_routes", "budget_view", "job_view", "models_view"]

# Where the agents' MCP endpoint (agoranet.agents.mcp_http) is mounted, when it is.
MCP_PATH: Final = "/mcp"
# Where the routes (and the MCP endpoint beside them) are: a keyed gateway needs a key there.
AGENT_PATHS: Final = ("/agoranet/budget", "/agoranet/models", "/agoranet/fine_tuning", MCP_PATH,
                      "/agoranet/tools")

_TUNE_FIELDS: Final = frozenset({"model", "examples", "epochs", "seed"})
_MAX_EXAMPLES: Final = 10_000
_JOB_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,100}")
_NODE_TIMEOUT: Final = httpx.Timeout(60.0, connect=5.0)


def budget_view(service: GatewayService, access: KeyAccess | None) -> dict[str, Any]:
    """What ``access``'s key (or, on an open gateway, the owner) has spent and has left."""
    budget = service.budget
    limit = budget.limit
    left_global = None if limit is None else max(0, limit - budget.spent - budget.reserved)
    gateway = {"limit": limit, "spent": budget.spent, "reserved": budget.reserved,
               "remaining": left_global}
    if access is None:
        return {"key": None, "budget": limit, "spent": budget.spent,
                "reserved": budget.reserved, "remaining": left_global,
                "available": left_global, "limited_by": "gateway" if limit is not None else None,
                "gateway": gateway}
    chain = access.chain  # as read when the request was authenticated
    key = chain[0]
    available, limited_by = left_global, "gateway" if limit is not None else None
    for record in chain:  # the key's own cap first, then each ancestor's
        for left, what in ((record.remaining, record.name),
                           (record.day_remaining, f"{record.name} (today)")):
            if left is not None and (available is None or max(0, left) < available):
                available, limited_by = max(0, left), what
    return {"key": key.name, "parent": key.parent, "budget": key.budget,
            "spent": key.spent, "reserved": key.reserved, "remaining": key.remaining,
            "per_day": key.per_day, "spent_today": key.day_spent,
            "available": available, "limited_by": limited_by, "gateway": gateway}


def models_view(service: GatewayService, access: KeyAccess | None) -> list[dict[str, Any]]:
    """The models ``access`` may use: cheapest price, node count and capabilities."""
    seen: dict[str, dict[str, Any]] = {}
    for node in service.directory.nodes.values():
        if node.offer is None:
            continue
        for model in node.offer.models:
            if access is not None and not access.allows_model(model.id):
                continue
            price = {"input_per_million": model.price.input_per_million,
                     "output_per_million": model.price.output_per_million}
            entry = seen.setdefault(model.id, {
                "id": model.id, "nodes": 0, "cheapest_price": price, "context_length": 0,
                "capabilities": set()})
            entry["nodes"] += 1
            if (price["output_per_million"], price["input_per_million"]) < (
                    entry["cheapest_price"]["output_per_million"],
                    entry["cheapest_price"]["input_per_million"]):
                entry["cheapest_price"] = price
            entry["context_length"] = max(entry["context_length"], model.context_length)
            # What at least one node offers: its engine's (tools, structured_output, ...),
            # then adapters, commitments, fine-tuning (and whether a node trains it free).
            entry["capabilities"].update(model.capabilities or ())
            for name, offered in (("adapters", model.adapters.accepted),
                                  ("commitments", model.commitments.offered),
                                  ("fine_tuning", node.offer.fine_tuning.accepted),
                                  ("free_fine_tuning", _tunes_free(node, model.id))):
                if offered:
                    entry["capabilities"].add(name)
    for entry in seen.values():
        entry["capabilities"] = sorted(entry["capabilities"])
    return [seen[name] for name in sorted(seen)]


def _tunes_free(node: NodeState, model: str) -> bool:
    offer = node.offer
    return (offer is not None and offer.fine_tuning.accepted and node.model(model) is not None
            and (offer.payment is None
                 or offer.fine_tuning.price_per_million_training_tokens == 0))


def _training_price(node: NodeState) -> int:
    offer = node.offer
    return offer.fine_tuning.price_per_million_training_tokens if offer is not None else 0


def _owner_token(salt: bytes, access: KeyAccess | None) -> str:
    """Who the caller is to a node: this gateway's secret salt and the key's lasting id
    (the node never sees the key, and a rotated key keeps its jobs)."""
    who = f"key:{access.key.id}" if access is not None else "open-gateway"
    return "agn-job-" + hmac.new(salt, who.encode(), hashlib.sha256).hexdigest()


def _examples(body: dict[str, Any]) -> bytes:
    """The chat examples as a JSONL training file (the node checks each line)."""
    examples = body.get("examples")
    if not isinstance(examples, list) or not 0 < len(examples) <= _MAX_EXAMPLES:
        raise InvalidRequestError(f"'examples' must be a list of 1 to {_MAX_EXAMPLES} chat "
                                  "examples, each {\"messages\": [...]}", param="examples")
    for number, example in enumerate(examples, 1):
        if not isinstance(example, dict) or not isinstance(example.get("messages"), list):
            raise InvalidRequestError(f"example {number} must be an object with a list "
                                      "'messages'", param="examples")
    return b"".join(json.dumps(e).encode() + b"\n" for e in examples)


def _hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
    epochs = body.get("epochs")
    if epochs is None:
        return {}
    if type(epochs) is not int or not 1 <= epochs <= 100:
        raise InvalidRequestError("'epochs' must be a whole number, 1 to 100", param="epochs")
    return {"n_epochs": epochs}


def _node_error(node: NodeState, reply: httpx.Response) -> InvalidRequestError | UpstreamError:
    """A node's refusal: the buyer's mistake (4xx) comes back as such, with its message."""
    try:
        message = str(reply.json()["error"]["message"])[:500]
    except (ValueError, KeyError, TypeError):
        message = reply.text[:300]
    if reply.status_code == 402:
        return InvalidRequestError(f"the node {node.url} wants to be paid for this job, and "
                                   f"this gateway could not pay it: {message}")
    if 400 <= reply.status_code < 500:
        return InvalidRequestError(f"the node {node.url} refused: {message}")
    return UpstreamError(f"the node {node.url} failed ({reply.status_code}): {message}")


def job_view(node: NodeState, job: dict[str, Any]) -> dict[str, Any]:
    """A node's job object, cut to what an agent follows."""
    extra = job.get("agoranet")
    if not isinstance(extra, dict):
        extra = {}
    return {"id": job.get("id"), "node": node.url, "model": job.get("model"),
            "status": job.get("status"), "fine_tuned_model": job.get("fine_tuned_model"),
            "trained_tokens": job.get("trained_tokens"),
            "trained_steps": extra.get("trained_steps"), "total_steps": extra.get("total_steps"),
            "charged": extra.get("charged", 0), "max_charge": extra.get("max_charge"),
            "error": job.get("error")}


def agent_routes(service: GatewayService, keys: KeyStore | None, salt: bytes) -> list[Route]:
    """The routes, over ``service`` (and ``keys`` on a keyed gateway); ``salt`` keeps the
    owner tokens shown to nodes this gateway's own."""

    def access_of(request: Request) -> KeyAccess | None:
        return authenticate(keys, request) if keys is not None else None

    # paid jobs: only a gateway with a wallet pays nodes that charge for training
    paid_jobs = (JobPayments(service.payers, service.budget, service.spend, service.client,
                             _NODE_TIMEOUT) if service.payers is not None else None)

    @openai_errors
    async def budget(request: Request) -> Response:
        return JSONResponse(budget_view(service, access_of(request)))

    @openai_errors
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list",
                             "data": models_view(service, access_of(request))})

    async def _send(node: NodeState, owner: str, method: str, path: str,
                    **kw: Any) -> dict[str, Any]:
        try:
            reply = await service.client.request(
                method, f"{node.url}{path}", headers={"Authorization": f"Bearer {owner}"},
                timeout=_NODE_TIMEOUT, **kw)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the node {node.url} did not answer: "
                                f"{type(exc).__name__}") from exc
        if reply.status_code != 200:
            raise _node_error(node, reply)
        try:
            answer = reply.json()
        except ValueError as exc:
            raise UpstreamError(f"the node {node.url} answered with no JSON") from exc
        if not isinstance(answer, dict):
            raise UpstreamError(f"the node {node.url} answered with no JSON object")
        return answer

    @openai_errors
    async def tune(request: Request) -> Response:
        access = access_of(request)
        body = await read_json(request)
        unknown = sorted(set(body) - _TUNE_FIELDS)
        if unknown:
            raise InvalidRequestError(f"unknown field(s): {', '.join(unknown)}",
                                      param=unknown[0])
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("'model' must be the base model's name", param="model")
        if access is not None:
            access.check_model(model)
        data, hyper = _examples(body), _hyperparameters(body)
        seed = body.get("seed")
        if seed is not None and type(seed) is not int:
            raise InvalidRequestError("'seed' must be a whole number", param="seed")
        nodes = [n for n in service.directory.nodes.values()
                 if n.model(model) is not None and n.offer is not None
                 and n.offer.fine_tuning.accepted and not n.banned()]
        if not nodes:
            raise ModelNotFoundError(f"no node on the network fine-tunes '{model}'",
                                     param="model")
        free = sorted((n for n in nodes if _tunes_free(n, model)),
                      key=lambda n: -n.reliability)
        paid = sorted((n for n in nodes if not _tunes_free(n, model)),
                      key=lambda n: (_training_price(n), -n.reliability))
        if not free and paid_jobs is None:
            raise InvalidRequestError(f"only nodes that charge for training fine-tune '{model}'"
                                      ", and this gateway has no wallet to pay them "
                                      "(start it with one to pay for fine-tuning)",
                                      param="model")
        owner = _owner_token(salt, access)
        failure: UpstreamError | None = None
        # free nodes first; then, with a wallet, paid ones, the cheapest first
        for node in free + (paid if paid_jobs is not None else []):
            try:  # a node that fails is not the buyer's mistake: try the next
                uploaded = await _send(node, owner, "POST", "/files",
                                       files={"file": ("examples.jsonl", data)},
                                       data={"purpose": "fine-tune"})
                wanted = {"model": model, "training_file": uploaded.get("id"),
                           "hyperparameters": hyper,
                           **({"seed": seed} if seed is not None else {})}
                if node in free or paid_jobs is None:
                    job = await _send(node, owner, "POST", "/fine_tuning/jobs", json=wanted)
                else:
                    job = await paid_jobs.start(
                        node, owner, wanted, _reserver(access, model),
                        access.name if access is not None else None, access is not None,
                        functools.partial(_node_error, node))
            except UpstreamError as exc:
                failure = exc
                continue
            return JSONResponse(job_view(node, job))
        raise failure or UpstreamError(f"no node took the job for '{model}'")

    def _reserver(access: KeyAccess | None, model: str) -> Callable[[str], Reserver]:
        """What a paid job's maximum is reserved against: the key's chain and the global
        budget, or (an open gateway) the global budget."""
        def reserver(request_id: str) -> Reserver:
            if access is None:
                return service.budget
            return access.budget(service.budget, request_id, model)
        return reserver

    @openai_errors
    async def status(request: Request) -> Response:
        access = access_of(request)
        job_id = request.path_params["job_id"]
        if not _JOB_ID.fullmatch(job_id):
            raise InvalidRequestError("that is not a job id", param="job_id")
        url = request.query_params.get("node")
        if not url:
            raise InvalidRequestError("give the job's node: ?node=URL (fine_tune's answer "
                                      "names it)", param="node")
        node = service.directory.nodes.get(normalise_url(url))
        if node is None:  # only nodes the gateway knows: it is no proxy to anywhere
            raise InvalidRequestError(f"the gateway knows no node at {url}", param="node")
        job = await _send(node, _owner_token(salt, access), "GET",
                          f"/fine_tuning/jobs/{job_id}")
        if paid_jobs is not None:  # a paid job that has ended: its receipt settles it
            await paid_jobs.settle(node, job)
        return JSONResponse(job_view(node, job))

    return [
        Route("/agoranet/budget", budget, methods=["GET"]),
        Route("/agoranet/models", models, methods=["GET"]),
        Route("/agoranet/fine_tuning/jobs", tune, methods=["POST"]),
        Route("/agoranet/fine_tuning/jobs/{job_id}", status, methods=["GET"]),
    ]
