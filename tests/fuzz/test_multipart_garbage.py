"""A body that claims to be multipart but is not: 400, not 500 (found by ``bench/fuzz.py``).

Starlette refuses it inside ``request.form()`` with its own HTTPException(400); the
OpenAI error mapping turned every exception it did not know into a 500.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agoranet.config import NodeSettings
from agoranet.node.app import create_app
from agoranet.tuning.jobs import JobManager
from fakes import FakeEngine


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    def never(*args: Any) -> Any:
        raise AssertionError("no job runs here")

    jobs = JobManager("fake", tmp_path / "jobs", never, never)
    app = create_app(FakeEngine(), NodeSettings(), jobs)  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://node") as client:
            yield client
    finally:
        jobs.close()


@pytest.mark.parametrize("body", [
    b"--b\r\n\xc3\x81\x16\xf1--b--\r\n",
    b"--b\r\nContent(Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
])
async def test_broken_multipart_is_a_400(node: httpx.AsyncClient, body: bytes) -> None:
    response = await node.post("/v1/files", content=body, headers={
        "authorization": "Bearer me", "content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "multipart" in error["message"]
