"""Serving logic behind the OpenAI routes: validate, prepare once, generate, shape."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from agoranet.api.errors import error_from_exception
from agoranet.api.sse import DONE, sse_event, sse_json
from agoranet.api.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    DeltaMessage,
    ModelCard,
    ModelList,
    TokenizeRequest,
)
from agoranet.engines.adapters import AdapterHost
from agoranet.engines.base import (
    Delta,
    Engine,
    Finish,
    GenerationRequest,
    ModelInfo,
    Prepared,
    StreamEvent,
    TokenLogprob,
    ToolCallDelta,
    collect,
)
from agoranet.engines.structured import join_tool_calls
from agoranet.errors import ContextLengthError, InvalidRequestError, ModelNotFoundError
from agoranet.market import ModelName
from agoranet.node import convert
from agoranet.node.metering import Metering
from agoranet.node.metrics import note_finished, note_started

__all__ = ["InferenceService", "Started"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Started:
    """A generation whose first event has arrived: errors before it became HTTP errors."""

    first: StreamEvent
    rest: AsyncIterator[StreamEvent]

    async def events(self) -> AsyncIterator[StreamEvent]:
        try:
            yield self.first
            async for event in self.rest:
                yield event
        finally:
            await self.rest.aclose()  # type: ignore[attr-defined]


# Bytes one token may stand for when the engine does not say (no real vocabulary's
# tokens average anywhere near this over a whole context).
_UNKNOWN_TOKEN_BYTES = 256


def _check_prompt_bytes(request: GenerationRequest, info: ModelInfo) -> None:
    """Refuse, before tokenising it, a prompt too long in bytes to fit the context even
    if every token stood for the longest text a token of the vocabulary can."""
    size = len((request.prompt or "").encode("utf-8", "surrogatepass")) + sum(
        len(m.content.encode("utf-8", "surrogatepass")) for m in request.messages or ())
    per_token = info.max_token_bytes or _UNKNOWN_TOKEN_BYTES
    if size > info.context_length * per_token:
        raise ContextLengthError(
            f"This model's maximum context length is {info.context_length} tokens, and the "
            f"prompt is {size} bytes: more than {info.context_length} tokens of at most "
            f"{per_token} bytes each. Please reduce the length of the prompt.",
            param="messages" if request.messages is not None else "prompt")


class InferenceService:
    """Chat and text completions over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # The adapters ``/v1/models`` may name (those their owners made public); None: all.
        self.listed_adapters: Callable[[], set[str]] | None = None

    def model_info(self, name: str) -> ModelInfo:
        """The served base model behind ``name`` (``BASE`` or ``BASE@adapter:<id>``)."""
        base = ModelName.base_of(name)
        for info in self.engine.models():
            if info.name == base:
                return info
        served = ", ".join(repr(i.name) for i in self.engine.models())
        raise ModelNotFoundError(
            f"The model '{name}' does not exist on this node (it serves {served})", param="model"
        )

    def model_list(self) -> ModelList:
        cards = [ModelCard(id=i.name, max_model_len=i.context_length) for i in self.engine.models()]
        if isinstance(self.engine, AdapterHost):
            bases = {i.name: i for i in self.engine.models()}
            listed = self.listed_adapters() if self.listed_adapters is not None else None
            for adapter in self.engine.list_adapters():
                base = bases.get(adapter.manifest.base_model)
                if base is not None and (listed is None or adapter.id in listed):
                    cards.append(ModelCard(id=str(ModelName(base.name, adapter.id)),
                                           max_model_len=base.context_length))
        return ModelList(data=cards)

    def model_card(self, name: str) -> ModelCard:
        """``/v1/models/{name}``: the model as ``/v1/models`` lists it, or a 404."""
        for card in self.model_list().data:
            if card.id == name:
                return card
        raise ModelNotFoundError(f"The model '{name}' does not exist on this node",
                                 param="model")

    async def prepare(self, request: GenerationRequest, requested: int | None) -> Prepared:
        """Tokenise once, check the context, and fix ``max_tokens``."""
        info = self.model_info(request.model)
        if request.commitments and info.commitments is None:
            raise InvalidRequestError(
                f"this node cannot return commitments for '{request.model}': its "
                f"{self.engine.name} engine does not expose hidden states",
                param="agoranet.commitments",
            )
        _check_prompt_bytes(request, info)
        prepared = await self.engine.prepare(request)
        room = prepared.context_length - prepared.prompt_tokens
        wanted = requested if requested is not None else room
        if room <= 0 or wanted > room:
            raise ContextLengthError(
                f"This model's maximum context length is {prepared.context_length} tokens. "
                f"However, you requested {prepared.prompt_tokens + max(wanted, 0)} tokens "
                f"({prepared.prompt_tokens} in the prompt, {max(wanted, 0)} in the completion). "
                "Please reduce the length of the prompt or the completion.",
                param="max_tokens" if requested is not None and room > 0 else "messages",
            )
        return dataclasses.replace(
            prepared, request=dataclasses.replace(prepared.request, max_tokens=wanted)
        )

    async def tokenize(self, request: TokenizeRequest) -> Prepared:
        """Count the prompt tokens of a prompt or a chat, as generation would."""
        self.model_info(request.model)
        return await self.engine.prepare(convert.from_tokenize(request))

    async def start(self, prepared: Prepared) -> Started:
        """Begin generating and wait for the first event, so early errors are plain HTTP ones."""
        note_started(prepared)
        events = self.engine.stream(prepared)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]
            raise
        return Started(first, events)

    # ---------------------------------------------------------------- chat

    async def prepare_chat(self, request: ChatCompletionRequest) -> Prepared:
        limit = request.completion_limit()
        return await self.prepare(convert.from_chat(request, limit or 1), limit)

    async def prepare_completion(self, request: CompletionRequest) -> Prepared:
        return await self.prepare(
            convert.from_completion(request, request.max_tokens or 1), request.max_tokens
        )

    async def chat(self, request: ChatCompletionRequest, *, prepared: Prepared | None = None,
                   metering: Metering | None = None) -> ChatCompletion | AsyncIterator[bytes]:
        """Answer ``request``; ``prepared``: its prepared form if it was prepared already (to
        price it); ``metering``: what a paid request's usage and receipt frames go through."""
        if prepared is None:
            prepared = await self.prepare_chat(request)
        started = await self.start(prepared)
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._chat_stream(request, started, include_usage, metering)
        calls: list[ToolCallDelta] = []
        text, tokens, finish = await _drain(started, metering, calls)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:  # OpenAI's shape of a call: no content, the calls
            message = {"role": "assistant", "content": text or None,
                       "tool_calls": join_tool_calls(calls)}
        return ChatCompletion(
            id=convert.new_id("chatcmpl"),
            created=convert.now(),
            model=request.model,
            choices=[
                Choice(
                    message=message,
                    logprobs=convert.chat_logprobs(tokens) if request.logprobs else None,
                    finish_reason=finish.reason,
                )
            ],
            usage=convert.usage_of(finish),
            agoranet=convert.agoranet_result(finish),
        )

    async def _chat_stream(
        self, request: ChatCompletionRequest, started: Started, include_usage: bool,
        metering: Metering | None,
    ) -> AsyncIterator[bytes]:
        ident, created = convert.new_id("chatcmpl"), convert.now()

        def chunk(choice: ChunkChoice | None, finish: Finish | None = None) -> bytes:
            return sse_event(
                ChatCompletionChunk(
                    id=ident,
                    created=created,
                    model=request.model,
                    choices=[choice] if choice else [],
                    usage=convert.usage_of(finish) if finish else None,
                )
            )

        yield chunk(ChunkChoice(delta=DeltaMessage(role="assistant", content="")))

        def on_delta(delta: Delta) -> bytes:
            logprobs = convert.chat_logprobs(delta.tokens) if request.logprobs else None
            if delta.tool_calls:
                message = DeltaMessage(content=delta.text or None,
                                       tool_calls=convert.tool_call_deltas(delta.tool_calls))
            else:
                message = DeltaMessage(content=delta.text)
            return chunk(ChunkChoice(delta=message, logprobs=logprobs))

        def on_finish(finish: Finish) -> list[bytes]:
            out = [chunk(ChunkChoice(delta=DeltaMessage(), finish_reason=finish.reason))]
            extension = convert.agoranet_result(finish)
            if extension is not None:  # the commitments, in a chunk of their own
                out.append(sse_event(ChatCompletionChunk(id=ident, created=created,
                                                         model=request.model, choices=[],
                                                         agoranet=extension)))
            if include_usage:
                out.append(chunk(None, finish))
            return out

        async for piece in _frames(started, on_delta, on_finish, metering):
            yield piece

    # ---------------------------------------------------------- completions

    async def completion(self, request: CompletionRequest, *, prepared: Prepared | None = None,
                         metering: Metering | None = None
                         ) -> Completion | AsyncIterator[bytes]:
        """As :meth:`chat`, for a text completion."""
        if prepared is None:
            prepared = await self.prepare_completion(request)
        started = await self.start(prepared)
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return self._completion_stream(request, started, include_usage, metering)
        deltas: list[Delta] = []
        text, _, finish = await _drain(started, metering, deltas=deltas)
        return Completion(
            id=convert.new_id("cmpl"),
            created=convert.now(),
            model=request.model,
            choices=[
                CompletionChoice(
                    text=text,
                    logprobs=convert.completion_logprobs_of(deltas)
                    if request.logprobs is not None
                    else None,
                    finish_reason=finish.reason,
                )
            ],
            usage=convert.usage_of(finish),
            agoranet=convert.agoranet_result(finish),
        )

    async def _completion_stream(
        self, request: CompletionRequest, started: Started, include_usage: bool,
        metering: Metering | None,
    ) -> AsyncIterator[bytes]:
        ident, created = convert.new_id("cmpl"), convert.now()
        offset = 0

        def chunk(choices: list[CompletionChoice], finish: Finish | None = None) -> bytes:
            usage = convert.usage_of(finish) if finish else None
            return sse_event(
                Completion(id=ident, created=created, model=request.model, choices=choices,
                           usage=usage)
            )

        def on_delta(delta: Delta) -> bytes:
            nonlocal offset
            logprobs = None
            if request.logprobs is not None:
                logprobs = convert.completion_logprobs(delta.tokens, offset, delta.text)
            offset += len(delta.text)
            return chunk([CompletionChoice(text=delta.text, logprobs=logprobs)])

        def on_finish(finish: Finish) -> list[bytes]:
            out = [chunk([CompletionChoice(text="", finish_reason=finish.reason)])]
            extension = convert.agoranet_result(finish)
            if extension is not None:  # the commitments, in a chunk of their own
                out.append(sse_event(Completion(id=ident, created=created, model=request.model,
                                                choices=[], agoranet=extension)))
            if include_usage:
                out.append(chunk([], finish))
            return out

        async for piece in _frames(started, on_delta, on_finish, metering):
            yield piece


async def _drain(started: Started, metering: Metering | None,
                 calls: list[ToolCallDelta] | None = None,
                 deltas: list[Delta] | None = None
                 ) -> tuple[str, list[TokenLogprob], Finish]:
    """The whole answer (its usage recorded in ``metering``); tool-call pieces, if any,
    are added to ``calls``, and each delta to ``deltas``."""

    async def recorded() -> AsyncIterator[StreamEvent]:
        events = started.events()
        try:
            async for event in events:
                if calls is not None and isinstance(event, Delta):
                    calls.extend(event.tool_calls)
                if deltas is not None and isinstance(event, Delta):
                    deltas.append(event)
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    text, tokens, finish = await collect(recorded())
    note_finished(finish)
    if metering is not None:
        metering.usage = finish
    return text, tokens, finish


async def _frames(
    started: Started,
    on_delta: Callable[[Delta], bytes],
    on_finish: Callable[[Finish], list[bytes]],
    metering: Metering | None,
) -> AsyncIterator[bytes]:
    """SSE frames for a started generation, ending in ``[DONE]`` or an error event; a
    paid one's usage, running receipts and final receipt go through ``metering``."""
    events = started.events()
    try:
        finished: Finish | None = None
        progress = metering.stream_progress if metering is not None else None
        sent = 0
        async for event in events:
            if isinstance(event, Delta):
                if event.text or event.tokens or event.tool_calls:
                    yield on_delta(event)
                    sent += 1
                    if progress is not None:  # running payment receipts, as frames go out
                        for frame in await progress(sent):
                            yield frame
            else:
                finished = event
                for frame in on_finish(event):
                    yield frame
        if finished is not None:
            note_finished(finished)
        if metering is not None and finished is not None:
            metering.usage = finished
            if metering.stream_finish is not None:  # the payment receipt, before [DONE]
                for frame in await metering.stream_finish(finished):
                    yield frame
        yield DONE
    except Exception as exc:  # headers are gone: report the failure in the stream
        logger.exception("generation failed mid-stream")
        _, body, _ = error_from_exception(exc)
        yield sse_json(body)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
