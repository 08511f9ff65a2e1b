"""A prompt too long in bytes to fit the context is refused before it is tokenised
(issue #12, defect 9: a 4 MB prompt spent ~5.5 s in the tokenizer before its 400)."""

from __future__ import annotations

from typing import Any

import pytest

from agoranet.api.types import ChatCompletionRequest, CompletionRequest
from agoranet.engines.base import GenerationRequest, Prepared
from agoranet.engines.prompt import encode_prompt
from agoranet.errors import ContextLengthError
from agoranet.node.service import InferenceService

TEXTS = ["hello there, how are you?", "    " * 50, "1234567890" * 20, "\u00e9\u00e8\u4e2d\u6587" * 30,
         "\U0001f600" * 40, "----====____" * 10, "\n\n\t" * 30]


def counting(engine: Any) -> list[GenerationRequest]:
    """The requests the engine was asked to tokenise."""
    seen: list[GenerationRequest] = []
    prepare = engine.prepare

    async def counted(request: GenerationRequest) -> Prepared:
        seen.append(request)
        return await prepare(request)  # type: ignore[no-any-return]

    engine.prepare = counted
    return seen


async def test_a_prompt_over_the_byte_bound_is_refused_untokenised(tiny_engine: Any) -> None:
    info = tiny_engine.models()[0]
    assert info.max_token_bytes is not None
    bound = info.context_length * info.max_token_bytes
    seen = counting(tiny_engine)
    service = InferenceService(tiny_engine)
    for huge in ("x" * (bound + 1), "word " * (4 * 1024 * 1024 // 5)):  # ... and 4 MB
        with pytest.raises(ContextLengthError, match="bytes") as info_chat:
            await service.prepare_chat(ChatCompletionRequest.model_validate(
                {"model": info.name, "messages": [{"role": "user", "content": huge}]}))
        assert info_chat.value.param == "messages"
        with pytest.raises(ContextLengthError, match="bytes"):
            await service.prepare_completion(CompletionRequest.model_validate(
                {"model": info.name, "prompt": huge}))
    assert seen == []  # never tokenised
    # a prompt that fits is tokenised as before
    fits = await service.prepare_chat(ChatCompletionRequest.model_validate(
        {"model": info.name, "messages": [{"role": "user", "content": "hello"}],
         "max_tokens": 4}))
    assert fits.prompt_tokens > 0 and len(seen) == 1


async def test_the_bound_holds_for_any_text(tiny_engine: Any) -> None:
    """No text is shorter in tokens than its bytes over ``max_token_bytes``: the check
    never refuses a prompt that would fit."""
    info = tiny_engine.models()[0]
    tokenizer = tiny_engine.loaded.tokenizer
    for text in TEXTS:
        request = GenerationRequest(model=info.name, prompt=text)
        tokens = len(encode_prompt(tokenizer, request))
        assert tokens * info.max_token_bytes >= len(text.encode()), text
