"""OpenAI's files and fine-tuning jobs API, over a node's :class:`JobManager`.

The caller's bearer token (any secret string) names the owner until payments
give buyers an on-chain identity: only that owner sees its files and jobs and
downloads the adapter.

On a paid node (``payments``, a :class:`~agoranet.node.job_payments.JobPayments`)
``POST /v1/fine_tuning/jobs`` is paid with x402 like inference, but by a
route of its own rather than the payment middleware: the training file is
counted and priced first (a bad request is a 400 and costs nothing), then an
unpaid or short request gets a 402 with the requirements and creates no job,
and a paid one holds its voucher in the ledger before the job exists. The
job object carries, under ``agoranet``, its price, maximum, what it was charged
and its ``payment`` (the x402 payment response with the signed receipt, once
there is one); ``GET /v1/fine_tuning/jobs/{id}/receipt`` returns that payment
alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.api.errors import error_body
from agoranet.errors import InvalidRequestError, PaymentRequiredError, RequestError, TuningError
from agoranet.node.routes import openai_errors, read_json
from agoranet.payments import x402wire
from agoranet.request_ids import REQUEST_ID_HEADER
from agoranet.request_ids import request_id as checked_request_id
from agoranet.tuning.jobs import FineTuneJob, JobManager, JobPlan, StoredFile

if TYPE_CHECKING:
    from agoranet.node.job_payments import JobPayments

__all__ = ["finetune_routes", "job_object"]


class _Unauthorized(RequestError):
    status_code = 401
    code = "missing_api_key"


def owner_of(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _Unauthorized(
            "send an API key (any secret string: it names you as the owner of your jobs)"
        )
    return hashlib.sha256(token.strip().encode()).hexdigest()


def file_object(stored: StoredFile) -> dict[str, Any]:
    return {"id": stored.id, "object": "file", "bytes": stored.bytes,
            "created_at": stored.created_at, "filename": stored.filename,
            "purpose": stored.purpose, "status": "processed"}


def job_object(job: FineTuneJob, price_per_million: int) -> dict[str, Any]:
    config = job.config
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": job.created_at,
        "model": job.model, "status": job.status, "training_file": job.training_file,
        "validation_file": None, "fine_tuned_model": job.fine_tuned_model,
        "finished_at": job.finished_at, "trained_tokens": job.trained_tokens,
        "error": job.error, "result_files": [], "seed": job.seed,
        "organization_id": job.owner[:16], "estimated_finish": None, "integrations": [],
        "hyperparameters": {"n_epochs": config.epochs or "auto",
                            "batch_size": config.batch_size,
                            "learning_rate_multiplier": "auto"},
        "agoranet": {"price_per_million_training_tokens": price_per_million,
                     "training_tokens": job.size.tokens if job.size else None,
                     "total_steps": job.size.steps if job.size else None,
                     "trained_steps": job.trained_steps, "max_charge": job.max_charge,
                     "charged": job.charged, "payment": job.payment,
                     "adapter_download": f"/v1/fine_tuning/jobs/{job.id}/adapter"},
    }


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Fields that would change the job's meaning and that this node does not implement."""
    if body.get("validation_file"):
        raise InvalidRequestError("validation files are not supported: the node holds out "
                                  "part of the training file instead", param="validation_file")
    method = body.get("method") or {}
    if not isinstance(method, dict) or method.get("type", "supervised") != "supervised":
        raise InvalidRequestError("only supervised fine-tuning is offered", param="method")


def _payment_required(payments: JobPayments, plan: JobPlan, exc: PaymentRequiredError,
                      request: Request) -> Response:
    """A 402 with the x402 requirements for the job's maximum; no job is created."""
    required = payments.payment_required(plan.amount, exc, str(request.url))
    body = error_body(exc.message, error_type=exc.error_type, code=exc.reason)
    body["x402"] = required.model_dump(by_alias=True, exclude_none=True, mode="json")
    body["agoranet"] = {"training_tokens": plan.size.tokens, "epochs": plan.size.epochs,
                        "price_per_million_training_tokens":
                            payments.prices.input_per_million,
                        "max_charge": plan.amount}
    return Response(json.dumps(body), status_code=exc.status_code,
                    media_type="application/json",
                    headers={x402wire.PAYMENT_REQUIRED: x402wire.encode_model(required)})


def _hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("method") or {}
    supervised = method.get("supervised") or {}
    if not isinstance(supervised, dict):
        raise InvalidRequestError("method.supervised must be an object", param="method")
    found = supervised.get("hyperparameters") or body.get("hyperparameters") or {}
    if not isinstance(found, dict):
        raise InvalidRequestError("hyperparameters must be an object", param="hyperparameters")
    return found


def finetune_routes(manager: JobManager, payments: JobPayments | None = None) -> list[Route]:
    """The routes over ``manager``; job creation is paid through ``payments`` if given."""
    def as_request_error(exc: TuningError) -> InvalidRequestError:
        return InvalidRequestError(str(exc))

    @openai_errors
    async def create_file(request: Request) -> Response:
        owner = owner_of(request)
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile) or not isinstance(purpose, str):
            raise InvalidRequestError("send multipart fields 'file' and 'purpose'")
        data = await upload.read()
        try:
            stored = await asyncio.to_thread(manager.add_file, owner, upload.filename or "data",
                                             data, purpose)
        except TuningError as exc:
            raise as_request_error(exc) from exc
        return JSONResponse(file_object(stored))

    @openai_errors
    async def get_file(request: Request) -> Response:
        found = manager.get_file(owner_of(request), request.path_params["file_id"])
        return JSONResponse(file_object(found))

    @openai_errors
    async def create_job(request: Request) -> Response:
        owner = owner_of(request)
        body = await read_json(request)
        _refuse_unsupported(body)
        try:
            plan = await asyncio.to_thread(
                manager.plan, owner, str(body.get("model", "")),
                str(body.get("training_file", "")), _hyperparameters(body), body.get("seed"))
        except TuningError as exc:
            raise as_request_error(exc) from exc
        if payments is None or plan.amount == 0:  # a free node, or free training
            job = await asyncio.to_thread(manager.create_job,
                                          dataclasses.replace(plan, amount=0))
            return JSONResponse(job_object(job, manager.price_per_million))
        request_id = checked_request_id(request.headers.get(REQUEST_ID_HEADER))  # bad: a 400
        try:
            auth = await payments.authorize(
                request.headers.get(x402wire.PAYMENT_SIGNATURE), plan.amount, request_id)
        except PaymentRequiredError as exc:
            return _payment_required(payments, plan, exc, request)
        try:  # the voucher is held in the ledger: now the job may exist
            job = await asyncio.to_thread(manager.create_job, plan, payments.held(auth))
        except BaseException:
            await payments.abandon(auth)
            raise
        paid = x402wire.encode_json(payments.held_response(auth, job.id))
        return JSONResponse(job_object(job, manager.price_per_million),
                            headers={x402wire.PAYMENT_RESPONSE: paid})

    @openai_errors
    async def list_jobs(request: Request) -> Response:
        jobs = manager.list_jobs(owner_of(request))
        data = [job_object(j, manager.price_per_million) for j in jobs]
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    @openai_errors
    async def get_job(request: Request) -> Response:
        job = manager.get_job(owner_of(request), request.path_params["job_id"])
        return JSONResponse(job_object(job, manager.price_per_million))

    @openai_errors
    async def cancel_job(request: Request) -> Response:
        try:
            job = await asyncio.to_thread(  # a queued job is charged (a zero receipt) now
                manager.cancel, owner_of(request), request.path_params["job_id"])
        except TuningError as exc:
            raise as_request_error(exc) from exc
        return JSONResponse(job_object(job, manager.price_per_million))

    @openai_errors
    async def job_events(request: Request) -> Response:
        job = manager.get_job(owner_of(request), request.path_params["job_id"])
        events = [{"object": "fine_tuning.job.event", "id": e.id, "created_at": e.created_at,
                   "level": e.level, "message": e.message, "type": e.type, "data": e.data}
                  for e in reversed(job.events)]
        return JSONResponse({"object": "list", "data": events, "has_more": False})

    @openai_errors
    async def receipt(request: Request) -> Response:
        job = manager.get_job(owner_of(request), request.path_params["job_id"])
        return JSONResponse({"object": "fine_tuning.job.payment", "job": job.id,
                             "status": job.status, "charged": job.charged,
                             "payment": job.payment})

    @openai_errors
    async def download(request: Request) -> Response:
        try:
            archive = manager.adapter_archive(owner_of(request), request.path_params["job_id"])
        except TuningError as exc:
            raise as_request_error(exc) from exc
        return Response(archive, media_type="application/x-tar")

    return [
        Route("/v1/files", create_file, methods=["POST"]),
        Route("/v1/files/{file_id}", get_file, methods=["GET"]),
        Route("/v1/fine_tuning/jobs", create_job, methods=["POST"]),
        Route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/v1/fine_tuning/jobs/{job_id}/events", job_events, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}/adapter", download, methods=["GET"]),
        Route("/v1/fine_tuning/jobs/{job_id}/receipt", receipt, methods=["GET"]),
    ]
