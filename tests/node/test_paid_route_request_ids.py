"""The node's other paid routes (fine-tuning jobs, adapter uploads) check the buyer's
``x-request-id`` as the chat routes do: a request id that is not 1 to 200 letters, digits or
``._:-`` is a 400 in OpenAI's error JSON before the payment is looked at; none at all is a
fresh one. The routes' logic alone: the job manager, the adapter host and the payments are
doubles that record what reaches them (the paid flows themselves run on real processes in
tests/integration/test_gateway_paid_fine_tune.py and test_paid_adapters.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from agoranet.errors import RequestError
from agoranet.node.adapter_routes import adapter_routes
from agoranet.node.finetune_routes import finetune_routes
from agoranet.tuning.adapter import MANIFEST, AdapterManifest, pack_adapter

BAD = ["has space", "x" * 201, "", "semi;colon", "a/b", "tab\there"]
AUTH = {"authorization": "Bearer buyer-key"}


class _Reached(RequestError):
    """The payment was looked at (the double ends the request here)."""

    status_code = 418
    error_type = "reached_payment"


class _Payments:
    """Records the request id each payment is authorized under; pays nothing."""

    price_per_mb = 1  # an upload is paid

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    async def authorize(self, header: str | None, amount: int, request_id: str) -> Any:
        self.request_ids.append(request_id)
        raise _Reached("the payment was looked at")


class _Manager:
    """Plans every job at a price; creates none."""

    def plan(self, owner: str, model: str, training_file: str, hyper: dict[str, Any],
             seed: object) -> Any:
        class Plan:
            amount = 1000

        return Plan()

    def create_job(self, *args: Any) -> Any:
        raise AssertionError("no job may be created in these tests")


def _archive(folder: Path) -> bytes:
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / MANIFEST).write_text(AdapterManifest(
        base_model="fake", base_model_sha256=None, rank=1, alpha=1, target_modules="all",
        created="2026-01-01T00:00:00Z").model_dump_json())
    return pack_adapter(folder)


async def _post(routes: list[Any], path: str, request_id: str | None, **kw: Any
                ) -> httpx.Response:
    headers = dict(AUTH)
    if request_id is not None:
        headers["x-request-id"] = request_id
    transport = httpx.ASGITransport(app=Starlette(routes=routes))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        return await client.post(path, headers=headers, **kw)


def _assert_bad_id(response: httpx.Response, payments: _Payments) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "request_id")
    assert "1 to 200 letters, digits or '._:-'" in error["message"]
    assert payments.request_ids == []


JOB = {"model": "fake", "training_file": "file-1"}


@pytest.mark.parametrize("bad", BAD)
async def test_a_fine_tuning_job_with_a_bad_request_id_is_a_400_before_payment(
        bad: str) -> None:
    payments = _Payments()
    routes = finetune_routes(_Manager(), payments)  # type: ignore[arg-type]
    _assert_bad_id(await _post(routes, "/v1/fine_tuning/jobs", bad, json=JOB), payments)


async def test_a_fine_tuning_job_is_paid_under_the_buyers_request_id_or_a_fresh_one() -> None:
    payments = _Payments()
    routes = finetune_routes(_Manager(), payments)  # type: ignore[arg-type]
    longest = "job.1:a_B-" * 20
    for sent in (longest, None):
        response = await _post(routes, "/v1/fine_tuning/jobs", sent, json=JOB)
        assert response.status_code == 418, response.text
    assert payments.request_ids[0] == longest
    assert len(payments.request_ids) == 2 and payments.request_ids[1] != longest


@pytest.mark.parametrize("bad", BAD)
async def test_an_adapter_upload_with_a_bad_request_id_is_a_400_before_payment(
        bad: str, tmp_path: Path) -> None:
    payments = _Payments()
    routes = adapter_routes(None, "fake", 10**6, None, payments)  # type: ignore[arg-type]
    response = await _post(routes, "/v1/adapters", bad, content=_archive(tmp_path / "a"))
    _assert_bad_id(response, payments)


async def test_an_adapter_upload_is_paid_under_the_buyers_request_id(tmp_path: Path) -> None:
    payments = _Payments()
    routes = adapter_routes(None, "fake", 10**6, None, payments)  # type: ignore[arg-type]
    archive = _archive(tmp_path / "a")
    for sent in ("upload-1", None):
        response = await _post(routes, "/v1/adapters", sent, content=archive)
        assert response.status_code == 418, response.text
    assert payments.request_ids[0] == "upload-1"
    assert len(payments.request_ids) == 2 and payments.request_ids[1] != "upload-1"
