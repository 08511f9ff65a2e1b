"""Turning a request into prompt token ids with the model's tokenizer."""

from __future__ import annotations

from typing import Any

from agoranet.engines.base import GenerationRequest
from agoranet.errors import InvalidRequestError

__all__ = ["encode_prompt", "render_chat"]


def render_chat(tokenizer: Any, request: GenerationRequest) -> str:
    """The chat template applied to the request's messages."""
    if tokenizer.chat_template is None:
        raise InvalidRequestError("this model has no chat template; use /v1/completions")
    messages = [{"role": m.role, "content": m.content} for m in request.messages or ()]
    try:
        text = tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
        )
    except Exception as exc:  # jinja raises its own zoo of errors from templates
        raise InvalidRequestError(f"cannot apply the chat template: {exc}") from exc
    return str(text)


def encode_prompt(tokenizer: Any, request: GenerationRequest) -> list[int]:
    if request.messages is not None:
        text = render_chat(tokenizer, request)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(request.prompt or "", add_special_tokens=True)["input_ids"]
    if not ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    return [int(i) for i in ids]
