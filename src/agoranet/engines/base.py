"""The engine interface: list models, count tokens, stream tokens with logprobs.

An engine turns a :class:`GenerationRequest` into a stream of :class:`Delta`
events ending in one :class:`Finish`. Closing the stream early (the client went
away) stops generation. Engines are chosen by name through
:mod:`agoranet.engines.registry`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agoranet.proofs.commitments import Commitments

__all__ = [
    "Delta",
    "Engine",
    "Finish",
    "FinishReason",
    "GenerationRequest",
    "Message",
    "ModelInfo",
    "Prepared",
    "StreamEvent",
    "TokenLogprob",
    "ToolCallDelta",
    "collect",
]

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    # OpenAI's wire form: an assistant's calls ({"id", "type", "function": {"name",
    # "arguments"}}), and for a tool message the id of the call it answers.
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a node publishes about one model it serves."""

    name: str
    context_length: int
    weights_sha256: dict[str, str] = field(default_factory=dict)
    model_sha256: str | None = None
    sampler: str | None = None  # the stated sampling algorithm, for seeded audits
    commitments: str | None = None  # the commitment algorithm it can return, None if none
    # The most bytes of text one token of its vocabulary stands for (None: unknown); a
    # prompt over ``context_length`` times this cannot fit, and is refused untokenised.
    max_token_bytes: int | None = None
    # What it can do beyond plain text (names in agoranet.engines.capabilities).
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation, for a chat (``messages``) or a raw ``prompt``."""

    model: str
    messages: Sequence[Message] | None = None
    prompt: str | None = None
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    ignore_eos: bool = False
    commitments: bool = False  # return TOPLOC-style commitments with the finish event
    # Function calling and structured output, in OpenAI's wire form (already validated;
    # see agoranet.engines.structured for what they ask of an engine).
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str | Mapping[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of messages and prompt must be given")


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One sampled token with its log-probability and the top alternatives."""

    token: str
    logprob: float
    token_bytes: bytes
    top: tuple[tuple[str, float, bytes], ...] = ()
    token_id: int | None = None  # lets an auditor recompute the step exactly


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call: its first piece has ``id`` and ``name``, the rest add
    ``arguments`` text (OpenAI's streaming format)."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """New text (or tool-call pieces), and the tokens that produced it when logprobs
    were asked for."""

    text: str
    tokens: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    commitments: Commitments | None = None  # when the request asked for them


StreamEvent = Delta | Finish


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request checked against its model and tokenised once, ready to generate.

    ``prompt_tokens`` is what the node meters and validates against the context;
    ``payload`` is engine-private (token ids, a rendered prompt, ...).
    """

    request: GenerationRequest
    prompt_tokens: int
    context_length: int
    payload: object = None


@runtime_checkable
class Engine(Protocol):
    """What every inference engine offers the node."""

    name: str

    def models(self) -> list[ModelInfo]:
        """The models this engine serves."""
        ...

    async def prepare(self, request: GenerationRequest) -> Prepared:
        """Check the model and count prompt tokens (after the chat template) once."""
        ...

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        """Generate; close the iterator to cancel."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters for health checks: active, queued, generated tokens, cancelled."""
        ...

    async def aclose(self) -> None:
        """Release threads, connections and memory."""
        ...


async def collect(events: AsyncIterator[StreamEvent]) -> tuple[str, list[TokenLogprob], Finish]:
    """Drain a stream into its full text, token logprobs and final event."""
    text: list[str] = []
    tokens: list[TokenLogprob] = []
    finish: Finish | None = None
    async for event in events:
        if isinstance(event, Delta):
            text.append(event.text)
            tokens.extend(event.tokens)
        else:
            finish = event
    if finish is None:
        raise RuntimeError("engine stream ended without a finish event")
    return "".join(text), tokens, finish
