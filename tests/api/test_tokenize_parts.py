"""``POST /tokenize`` with a content part that is not text: 400, as in a chat request.

Found by ``bench/fuzz.py``: the chat request refuses such parts while it is parsed,
the tokenize request did not, and rendering its messages raised ValueError: a 500.
"""

from __future__ import annotations

import httpx
import pytest

from agoranet.config import NodeSettings
from agoranet.node.app import create_app
from fakes import FakeEngine


@pytest.mark.parametrize("content", [
    [{"type": "image_url", "image_url": {"url": "http://x"}}],
    [{}],
    [{"type": "text", "text": 5}],
])
async def test_tokenize_refuses_parts_that_are_not_text(content: object) -> None:
    app = create_app(FakeEngine(), NodeSettings())  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://node") as client:
        response = await client.post("/tokenize", json={
            "model": "fake", "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "text content parts" in error["message"]
