"""OpenAI's Responses API (``/v1/responses``) as the gateway serves it: wire types.

They describe the routes in the OpenAPI document (:mod:`agoranet.api.openapi`); the
gateway checks a request field by field itself (:mod:`agoranet.gateway.responses_request`,
which refuses with a 400 what the network does not do) and builds the answers in
:mod:`agoranet.gateway.responses_output`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ResponseDeleted",
    "ResponseError",
    "ResponseObject",
    "ResponseRequest",
    "ResponseStreamEvent",
    "ResponseUsage",
]


class ResponseRequest(BaseModel):
    """``POST /v1/responses``: input items (messages, function calls and their outputs) or
    a string, after the stored conversation of ``previous_response_id``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    tools: list[dict[str, Any]] | None = Field(
        default=None, description="function tools only (your code runs them)")
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = Field(
        default=None, description="``format``: text, json_object or json_schema")
    include: list[Literal["message.output_text.logprobs"]] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    store: bool = True
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    truncation: Literal["disabled"] | None = None
    reasoning: dict[str, Any] | None = Field(default=None, description="only all-null")
    service_tier: Literal["auto", "default"] | None = None
    agoranet: dict[str, Any] | None = Field(default=None,
                                            description="the gateway's routing policy")


class ResponseUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, Any] | None = None
    output_tokens_details: dict[str, Any] | None = None


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """A response: its output items (``message`` with ``output_text`` parts, or
    ``function_call``), status and usage, and the gateway's ``agoranet`` summary (the
    nodes that answered, the amount paid, the failovers)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    error: ResponseError | None = None
    incomplete_details: dict[str, Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[dict[str, Any]]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] | None = None
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    agoranet: dict[str, Any] | None = None


class ResponseStreamEvent(BaseModel):
    """One event of a streamed response (``event: <type>``): ``response.created``, ...,
    ``response.output_text.delta``, ..., ``response.completed`` (or ``.failed``)."""

    model_config = ConfigDict(extra="allow")

    type: str
    sequence_number: int
    response: ResponseObject | None = None
    item_id: str | None = None
    output_index: int | None = None
    content_index: int | None = None
    delta: str | None = None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True
