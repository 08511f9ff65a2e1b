"""``POST /v1/embeddings`` through the gateway: ranked, paid, budgeted, failed over.

Only nodes whose offer lists the ``embeddings`` capability for the model are asked
(a request for a model no node embeds is a 400 naming it; one no node serves a 404).
Each attempt reserves its worst case in the budget (under the caller's key) before it
is sent: the inputs' tokens, bounded by their bytes (a token stands for at least one)
plus room for special tokens, at the node's input price. A paid node gets a voucher
for that worst case and answers with a signed receipt for the input tokens it
embedded, checked by the payer; the spend log gets a row per node that answered, with
the receipt behind its amount. The body goes to the node unchanged (the same request a
client would send it directly), so the vectors are the node's own.

A node that refuses, fails or times out before its answer is skipped and banned for a
while, and the next node is asked; a refusal that is not the node's fault (404, a node
the gateway cannot pay) is skipped without counting against it; a request every node
would refuse (400, 413, 422) goes back to the client at once.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from agoranet.api import jsonlimits
from agoranet.api.embeddings import EmbeddingRequest
from agoranet.engines import capabilities
from agoranet.errors import (
    AgoranetError,
    CannotPayError,
    InvalidJSONError,
    InvalidRequestError,
    NodesDeclinedError,
    PaymentError,
    RequestError,
    UpstreamError,
)
from agoranet.gateway.answer_fields import summary_of
from agoranet.gateway.budget import Reserver
from agoranet.gateway.capabilities import Needs
from agoranet.gateway.keyaccess import KeyAccess
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.policy import Policy
from agoranet.gateway.ranking import Candidate, expected_cost
from agoranet.gateway.relay import RelayResult
from agoranet.gateway.service import GatewayService
from agoranet.gateway.spendlog import SpendLog, SpendRow
from agoranet.payments.receipts import Receipt

__all__ = ["embed", "input_bounds", "relay_embeddings"]

_CHARS_PER_TOKEN = 4
_SPECIAL_TOKENS = 8  # tokens a tokenizer may add to one input (BOS, CLS, SEP, ...)
_NEEDS = Needs(frozenset({capabilities.EMBEDDINGS}), {capabilities.EMBEDDINGS: "model"}, False)


class _ClientFault(RequestError):
    """The node refused the request itself (4xx): every node would, so tell the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status


class _Declined(Exception):
    """Not the node's fault (not served there, or the gateway cannot pay it)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class _Failed(Exception):
    """The node failed: it is banned for a while and the next node is asked."""


def input_bounds(request: EmbeddingRequest) -> tuple[int, int]:
    """A typical token count of the inputs (for ranking) and an upper bound (what the
    budget and the voucher cover)."""
    estimate = ceiling = 0
    for item in request.inputs():
        if isinstance(item, str):
            estimate += len(item) // _CHARS_PER_TOKEN + 2
            ceiling += len(item.encode("utf-8", "surrogatepass")) + _SPECIAL_TOKENS
        else:
            estimate += len(item)
            ceiling += len(item)
    return estimate, ceiling


async def embed(service: GatewayService, body: dict[str, Any],
                access: KeyAccess | None = None) -> tuple[dict[str, Any], RelayResult]:
    """Serve an embeddings request; with ``access`` (a gateway key) within that key's
    models, policy and budget chain."""
    options = body.get("agoranet")
    if isinstance(options, dict) and options.get("commitments"):
        raise InvalidRequestError("commitments are made for generated tokens: embeddings "
                                  "have none", param="agoranet.commitments")
    forward = {k: v for k, v in body.items() if k != "agoranet"}  # the gateway's, not a node's
    request = EmbeddingRequest.model_validate(forward)
    estimate, ceiling = input_bounds(request)
    if access is not None:
        access.check_model(request.model)
    policy = (access.narrow(service.policy) if access else service.policy).narrowed(options)
    policy = policy.model_copy(update={"commitments": False})  # nothing to commit to
    candidates, _ = service.candidates(request.model, estimate, 1, policy, _NEEDS)
    result = RelayResult(f"emb-{uuid.uuid4().hex}")
    budget = service.reserver(result, request.model, access)
    answer = await relay_embeddings(service.client, candidates, forward, ceiling, policy,
                                    budget, service.spend, result, service.payers)
    answer["agoranet"] = summary_of(result)
    return answer, result


@dataclass
class _Attempt:
    node: NodeState
    started: float
    paid: bool = False
    receipt: Receipt | None = None
    tokens: int | None = None  # the usage the node reported, once it answered
    answered: float | None = None


async def relay_embeddings(client: httpx.AsyncClient, candidates: list[Candidate],
                           body: dict[str, Any], ceiling: int, policy: Policy,
                           budget: Reserver, spend: SpendLog, result: RelayResult,
                           payers: NodePayers | None = None) -> dict[str, Any]:
    """The first answer of the ranked ``candidates`` (at most ``policy.max_attempts``),
    each attempt reserved, paid and accounted for exactly once; fills ``result``."""
    expected = len(EmbeddingRequest.model_validate(body).inputs())
    errors: list[str] = []
    declined: list[_Declined] = []
    for node, model in candidates[: policy.max_attempts]:
        worst = expected_cost(model, ceiling, 0)
        reservation = await budget.reserve(worst)
        attempt = _Attempt(node, time.perf_counter())
        failed: str | None = None
        answer: dict[str, Any] | None = None
        try:
            answer = await _ask(client, attempt, body, worst, expected, policy, payers)
        except _Declined as exc:
            declined.append(exc)
        except CannotPayError as exc:  # the gateway's trouble, not the node's
            declined.append(_Declined(503, "cannot_pay", f"the gateway cannot pay the node at "
                                                         f"{node.url}: {exc}"))
        except (_Failed, httpx.HTTPError, PaymentError, TimeoutError) as exc:
            failed = _describe(exc)
        finally:  # no await: a client hanging up cannot keep this from running
            amount = _account(attempt, model, body, reservation.amount, spend, result,
                              ok=answer is not None)
            reservation.release(amount)
        if failed is not None:
            node.record_failure(failed, policy.ban_base_s, policy.ban_cap_s)
            errors.append(f"{node.url}: {failed}")
            result.failovers += 1
            continue
        if answer is not None:
            duration = (attempt.answered or time.perf_counter()) - attempt.started
            node.record_success(duration * 1000, 0, duration)
            return answer
    if declined and not errors:
        first = min(declined, key=lambda d: {402: 0, 503: 1}.get(d.status, 2))
        raise NodesDeclinedError("; ".join(dict.fromkeys(str(d) for d in declined)),
                                 status_code=first.status, code=first.code)
    errors += [str(d) for d in declined]
    raise UpstreamError("no node could answer: " + ("; ".join(errors) or "none available"),
                        status_code=503)


async def _ask(client: httpx.AsyncClient, attempt: _Attempt, body: dict[str, Any],
               worst: int, expected: int, policy: Policy,
               payers: NodePayers | None) -> dict[str, Any]:
    node = attempt.node
    if payers is None and node.offer is not None and node.offer.payment is not None:
        raise _Declined(402, "payment_required",
                        f"the node at {node.url} sells for payment and this gateway has no "
                        "wallet to pay it: start the gateway with --keystore and --rpc-url "
                        "(and a --deposit), or allow only free nodes")
    try:
        paid = await payers.paid(node, worst) if payers is not None else None
    except AgoranetError as exc:
        raise CannotPayError(str(exc)) from exc
    attempt.paid = paid is not None
    with anyio.fail_after(policy.first_token_timeout_s):  # the whole answer is its first
        response = await client.post(f"{node.url}/embeddings", json=body,
                                     auth=paid or httpx.USE_CLIENT_DEFAULT)
    attempt.answered = time.perf_counter()
    attempt.receipt = paid.payment.receipt if paid is not None else None
    if response.status_code != 200:
        message = _error_message(response)
        if response.status_code in (400, 413, 422):
            raise _ClientFault(response.status_code, message)
        if response.status_code == 404:
            raise _Declined(404, "model_not_found", message)
        raise _Failed(f"HTTP {response.status_code}: {message}")
    if attempt.paid and attempt.receipt is None:
        raise _Failed("a paid answer came without a receipt")
    answer = _checked(response, expected)
    attempt.tokens = int(answer["usage"]["prompt_tokens"])
    return answer


def _checked(response: httpx.Response, expected: int) -> dict[str, Any]:
    """The node's answer if it has the shape of one: ``expected`` embeddings indexed
    0..n-1, each a list of numbers or a base64 string, and integer usage."""
    try:
        answer = jsonlimits.loads_object(response.content, what="the embeddings")
    except InvalidJSONError as exc:
        raise _Failed(str(exc)) from None
    data, usage = answer.get("data"), answer.get("usage")
    if not isinstance(data, list) or len(data) != expected:
        raise _Failed(f"sent {len(data) if isinstance(data, list) else 'no'} embeddings for "
                      f"{expected} inputs")
    rows = [row for row in data if isinstance(row, dict)]
    indices = sorted(i for row in rows if type(i := row.get("index")) is int)
    if indices != list(range(expected)) or not all(_vector_ok(row.get("embedding"))
                                                   for row in rows):
        raise _Failed("sent embeddings of the wrong shape")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if type(tokens) is not int or tokens < 0:
        raise _Failed("sent no usage.prompt_tokens")
    return answer


def _vector_ok(vector: object) -> bool:
    """A list of numbers, or a base64 string (``encoding_format`` ``base64``)."""
    if isinstance(vector, str):
        return True
    return isinstance(vector, list) and bool(vector) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in vector)


def _account(attempt: _Attempt, model: Any, body: dict[str, Any], worst: int,
             spend: SpendLog, result: RelayResult, *, ok: bool) -> int:
    """What the attempt cost (a paid node: its receipt's amount, nothing without one; a
    free node: its price list's estimate), logged when the node answered or charged."""
    receipt = attempt.receipt
    if receipt is not None:
        amount = int(receipt.amount)
    elif attempt.paid or attempt.tokens is None:
        amount = 0
    else:
        amount = min(worst, expected_cost(model, attempt.tokens, 0))
    if attempt.tokens is not None:
        tokens = attempt.tokens
    elif receipt is not None:  # charged, then failed (its answer was malformed)
        tokens = int(receipt.tokens_in)
    else:
        return amount
    duration = ((attempt.answered or time.perf_counter()) - attempt.started) * 1000
    spend.add(SpendRow(result.request_id, str(body["model"]), attempt.node.url, tokens, 0,
                       amount, duration, duration, "ok" if ok else "failed",
                       json.dumps(receipt.to_json()) if receipt is not None else None,
                       key=result.key))
    if ok:
        result.nodes.append(attempt.node.url)
        result.prompt_tokens = tokens
    result.amount += amount
    return amount


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out (no answer in time)"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({str(exc) or 'no answer in time'})"
    if isinstance(exc, httpx.HTTPError):
        return f"connection failed ({str(exc) or 'no answer'})"
    return str(exc)


def _error_message(response: httpx.Response) -> str:
    try:
        return str(jsonlimits.loads(response.content, what="an error body")["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]
