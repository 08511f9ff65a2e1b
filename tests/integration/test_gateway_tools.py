"""Structured output through the gateway; tool calls refused there until it relays them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import pytest
from openai import OpenAI

from agoranet.node.launcher import running_command
from helpers import node_process

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Tell me about the library."}]
SCHEMA = {"type": "object", "properties": {"book": {"type": "string", "maxLength": 30},
                                           "pages": {"type": "integer", "minimum": 1,
                                                     "maximum": 900}},
          "required": ["book", "pages"], "additionalProperties": False}


@pytest.fixture(scope="module")
def gateway(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("gw-tools")
    with node_process(["--model", str(tiny_model), "--no-fine-tuning", "--no-adapters",
                       "--free"]) as node, \
            running_command(["gateway", "--open", "--spend-log", str(home / "spend.sqlite"),
                             "--node", node]) as url:
        yield url


def test_json_schema_answers_are_valid_through_the_gateway(gateway: str) -> None:
    client = OpenAI(base_url=gateway, api_key="x", max_retries=0)
    form = {"type": "json_schema", "json_schema": {"name": "b", "schema": SCHEMA}}
    reply = client.chat.completions.create(
        model="tiny", messages=QUESTION, temperature=1, seed=4, max_tokens=120,
        response_format=form)  # type: ignore[arg-type]
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), SCHEMA)
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny", messages=QUESTION, temperature=1, seed=5, max_tokens=120,
            response_format=form, stream=True)  # type: ignore[arg-type]
        if c.choices)
    jsonschema.validate(json.loads(streamed), SCHEMA)


def test_tools_are_refused_not_dropped_by_the_gateway(gateway: str) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
    response = httpx.post(f"{gateway}/chat/completions", timeout=30, json={
        "model": "tiny", "messages": QUESTION, "tools": tools, "tool_choice": "required"})
    assert response.status_code == 400
    assert "tool" in response.json()["error"]["message"]
    bad = httpx.post(f"{gateway}/chat/completions", timeout=30, json={
        "model": "tiny", "messages": QUESTION, "response_format": {"type": "yaml_please"}})
    assert bad.status_code == 400 and "yaml_please" in bad.json()["error"]["message"]
