"""OpenAI's files and fine-tuning jobs API, over a node's :class:`JobManager`.

The caller's bearer token (any secret string) names the owner until payments
give buyers an on-chain identity: only that owner sees its files and jobs and
downloads the adapter.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agoranet.errors import InvalidRequestError, RequestError, TuningError
from agoranet.node.routes import openai_errors, read_json
from agoranet.tuning.jobs import FineTuneJob, JobManager, StoredFile

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
                     "charged": job.charged, "adapter_download": f"/v1/fine_tuning/jobs/{job.id}/adapter"},
    }


def _hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("method") or {}
    nested = (method.get("supervised") or {}).get("hyperparameters")
    found = nested or body.get("hyperparameters") or {}
    if not isinstance(found, dict):
        raise InvalidRequestError("hyperparameters must be an object", param="hyperparameters")
    return found


def finetune_routes(manager: JobManager) -> list[Route]:
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
        try:
            job = manager.create_job(owner, str(body.get("model", "")),
                                     str(body.get("training_file", "")),
                                     _hyperparameters(body), body.get("seed"))
        except TuningError as exc:
            raise as_request_error(exc) from exc
        return JSONResponse(job_object(job, manager.price_per_million))

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
            job = manager.cancel(owner_of(request), request.path_params["job_id"])
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
    ]
