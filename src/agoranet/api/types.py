"""OpenAI wire types shared by the node and the gateway.

Requests accept unknown fields (OpenAI clients send new ones all the time); the
field names are kept in ``model_extra`` and logged by the caller. Responses are
plain models serialised with ``exclude_none``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from agoranet.api.tools import (
    FunctionTool,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    check_tool_setup,
    unanswered_tool_messages,
)

__all__ = [
    "AgoranetOptions",
    "AgoranetResult",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChunkChoice",
    "CommitmentsOut",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionLogprobs",
    "CompletionRequest",
    "DeltaMessage",
    "LogprobContent",
    "Logprobs",
    "ModelCard",
    "ModelList",
    "StreamOptions",
    "TokenizeRequest",
    "TopLogprob",
    "Usage",
    "log_unknown_fields",
]

logger = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class ChatMessage(BaseModel):
    """One message; content may be a string or a list of text parts."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls (content may be null)
    tool_call_id: str | None = None  # a tool message: the call it answers

    @model_validator(mode="after")
    def _check_tool_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        """The message's text, joining text parts; other part types are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces: list[str] = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            pieces.append(part["text"])
        return "".join(pieces)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class AgoranetOptions(BaseModel):
    """The ``agoranet`` extension field of a request to a node: what it asks beyond OpenAI."""

    model_config = ConfigDict(extra="forbid")

    # TOPLOC-style commitments to the hidden states, at the offer's commitment price.
    commitments: StrictBool = False


class _Sampling(_Request):
    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extension: keep generating past end-of-sequence (benchmarks, tests).
    ignore_eos: bool = False
    agoranet: AgoranetOptions | None = None

    def wants_commitments(self) -> bool:
        return self.agoranet is not None and self.agoranet.commitments

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions`` body, with vLLM's continuation extensions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    # vLLM extensions: continue a partial assistant message (used for failover).
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    # Function calling and structured output (see agoranet.api.tools).
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        check_tool_setup(self.tools, self.tool_choice, self.parallel_tool_calls)
        for index, answered in unanswered_tool_messages(
                [(m.role, [c.id for c in m.tool_calls or ()], m.tool_call_id)
                 for m in self.messages]):
            raise ValueError(f"messages[{index}]: tool_call_id {answered!r} matches no "
                             "tool call of an earlier assistant message")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.continue_final_message:
            if self.add_generation_prompt:
                raise ValueError(
                    "continue_final_message needs add_generation_prompt set to false"
                )
            if self.messages[-1].role != "assistant":
                raise ValueError("continue_final_message needs a final assistant message")
        for message in self.messages:
            message.text()
        return self

    def completion_limit(self) -> int | None:
        """``max_completion_tokens`` wins over the older ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` body (a single prompt string)."""

    prompt: str
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value


class TokenizeRequest(_Request):
    """``POST /tokenize`` (vLLM's shape): a prompt, or messages to render with the template."""

    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    @model_validator(mode="after")
    def _check(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        for message in self.messages or ():
            message.text()  # a content part that is not text: refused here, as in a chat
        return self


def log_unknown_fields(request: BaseModel, route: str) -> None:
    """Log the names of fields the client sent that we do not know."""
    extra = request.model_extra or {}
    if extra:
        logger.info("%s: ignoring unknown fields %s", route, sorted(extra))


# ---------------------------------------------------------------- responses


class CommitmentsOut(BaseModel):
    """Commitments as sent (see :mod:`agoranet.proofs.commitments`); proofs in base64."""

    algorithm: str
    chunk: int
    k: int
    proofs: list[str]


class AgoranetResult(BaseModel):
    """The ``agoranet`` extension object of a response (or of one stream chunk)."""

    commitments: CommitmentsOut | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class LogprobContent(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)
    token_id: int | None = None  # agoranet extension (as vLLM's token ids): for audits


class Logprobs(BaseModel):
    content: list[LogprobContent] | None = None


class Choice(BaseModel):
    index: int = 0
    message: dict[str, Any]
    logprobs: Logprobs | None = None
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    agoranet: AgoranetResult | None = None


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    # OpenAI's streamed calls: index, id and name first, then the arguments in pieces.
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: Logprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    agoranet: AgoranetResult | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    agoranet: AgoranetResult | None = None


CompletionChunk = Completion


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "agoranet"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
