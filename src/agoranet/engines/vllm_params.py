"""What one request asks of vLLM, as plain data: no import of vLLM here.

- :func:`sampling_kwargs`: the keyword arguments of vLLM's ``SamplingParams`` (one
  sequence, temperature, top-p, seed, token limit, stop strings, logprobs, end of
  sequence, the tool-call openers a request without tools may not sample);
- :func:`plan_output`: what ``tools``/``tool_choice``/``response_format`` need, as the
  EBNF text of the same grammar the transformers engine enforces
  (:func:`agoranet.engines.constrained.output_grammar`), for vLLM's structured outputs
  (``StructuredOutputsParams(grammar=...)``), or a 400 for what this engine cannot honour;
- :func:`token_logprobs`: vLLM's per-token logprobs (``{token id: Logprob}`` per step)
  as :class:`~agoranet.engines.base.TokenLogprob`;
- :class:`LoraIds`: the adapter ids of the node's store as the small integers vLLM's
  ``LoRARequest`` wants.

The engine (:mod:`agoranet.engines.vllm`) turns these into vLLM objects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agoranet.engines.base import FinishReason, GenerationRequest, TokenLogprob
from agoranet.engines.structured import AutoTools, ForcedToolCall, output_mode
from agoranet.engines.toolparsers import Llama3JsonParser, ToolCallParser
from agoranet.errors import EngineError, InvalidRequestError

__all__ = [
    "BANNED_BIAS",
    "LoraIds",
    "OutputPlan",
    "finish_reason",
    "plan_output",
    "sampling_kwargs",
    "token_logprobs",
]

# vLLM clamps a logit bias to [-100, 100]: the lowest it takes, which no real logit gap
# overcomes (the transformers sampler removes these tokens outright).
BANNED_BIAS = -100.0


def sampling_kwargs(request: GenerationRequest, banned: Sequence[int] = (),
                    *, stop: Sequence[str] | None = None) -> dict[str, Any]:
    """``SamplingParams(**kwargs)`` for ``request`` (``banned``: token ids it may not
    sample; ``stop``: stop strings instead of the request's, e.g. with a call's end)."""
    if request.commitments:
        raise InvalidRequestError("the vllm engine cannot return commitments: it does not "
                                  "expose hidden states", param="agoranet.commitments")
    if request.max_tokens < 1:
        raise InvalidRequestError("max_tokens must be at least 1", param="max_tokens")
    return {
        "n": 1,
        "temperature": float(request.temperature),
        "top_p": float(request.top_p),
        "seed": request.seed,
        "max_tokens": int(request.max_tokens),
        "stop": list(request.stop if stop is None else stop) or None,
        "ignore_eos": bool(request.ignore_eos),
        "skip_special_tokens": True,
        # The chosen token's logprob always comes with them (vLLM: ``logprobs=0``).
        "logprobs": int(request.top_logprobs) if request.logprobs else None,
        "logit_bias": {int(i): BANNED_BIAS for i in banned} or None,
    }


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """How one request's output is produced and read back.

    ``grammar``: EBNF text vLLM must follow (None: free text). ``tool_names``: a forced
    call (one name: the text is its arguments; several: ``{"name", "arguments"}``
    objects). ``wrapped``: calls written in ``parser``'s format, read back by it.
    ``auto``: free text under ``tool_choice: auto``, its calls parsed by ``parser``."""

    grammar: str | None = None
    tool_names: tuple[str, ...] = ()
    wrapped: bool = False
    auto: bool = False
    parser: type[ToolCallParser] | None = None


def plan_output(request: GenerationRequest, parser: type[ToolCallParser] | None,
                renders_tools: bool, model: str) -> OutputPlan:
    """The :class:`OutputPlan` of ``request`` for a model whose chat template shows tools
    (``renders_tools``) and whose tool-call format ``parser`` reads (None: unknown)."""
    try:
        mode = output_mode(request)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from exc
    if mode is None:
        return OutputPlan()
    if isinstance(mode, AutoTools):
        if parser is not None and renders_tools:
            return OutputPlan(auto=True, parser=parser)
        why = ("it has no parser for its model's tool-call format (configure one with "
               "--tool-call-parser)" if renders_tools
               else "its chat template cannot show the model tools")
        raise InvalidRequestError(
            f"tool_choice 'auto' (the default when tools are given) is not supported by "
            f"'{model}' yet: {why}. Use tool_choice 'required' or {{'type': 'function', "
            "'function': {'name': ...}} (the call is then generated under the function's "
            "schema), or 'none'", param="tool_choice")
    if request.ignore_eos:
        raise InvalidRequestError("ignore_eos cannot be combined with a forced tool call or "
                                  "a JSON response_format: the answer ends with its grammar",
                                  param="ignore_eos")
    if request.continue_final_message:
        raise InvalidRequestError("the vllm engine cannot continue a final assistant message "
                                  "under a forced tool call or a JSON response_format",
                                  param="continue_final_message")
    from agoranet.engines.constrained import CallFormat, output_grammar

    if isinstance(mode, ForcedToolCall):
        if request.stop:
            raise InvalidRequestError("stop sequences cannot be combined with a forced tool "
                                      "call: they would cut its arguments", param="stop")
        names = tuple(f.name for f in mode.functions)
        if parser is None and not mode.parallel:  # the arguments alone, or name + arguments
            return OutputPlan(str(output_grammar(mode)), names)
        writer = parser or Llama3JsonParser
        calls = CallFormat(writer.call_before, writer.call_after, writer.call_separator)
        return OutputPlan(str(output_grammar(mode, calls)), names, wrapped=True, parser=writer)
    return OutputPlan(str(output_grammar(mode)))


def finish_reason(vllm_reason: str | None) -> FinishReason:
    """vLLM's ``finish_reason`` as ours; an abort we did not ask for is an engine error."""
    if vllm_reason == "length":
        return "length"
    if vllm_reason == "stop":
        return "stop"
    raise EngineError(f"vLLM ended the generation with {vllm_reason!r}")


def _field(entry: Any, name: Literal["logprob", "rank"]) -> Any:
    return entry[name] if isinstance(entry, Mapping) else getattr(entry, name)


def token_logprobs(token_ids: Sequence[int], steps: Sequence[Mapping[int, Any]] | None,
                   top: int, text_of: Callable[[int], str]) -> tuple[TokenLogprob, ...]:
    """One :class:`TokenLogprob` per generated token: ``steps[i]`` maps token ids to vLLM's
    ``Logprob`` (``logprob``, ``rank``) for the ``i``-th token (the chosen one and the
    ``top`` most likely); ``text_of`` spells a token as the tokenizer decodes it alone."""
    if steps is None:
        return ()
    if len(steps) != len(token_ids):
        raise EngineError(f"vLLM returned {len(steps)} logprob steps for {len(token_ids)} "
                          "tokens")
    out = []
    for token_id, step in zip(token_ids, steps, strict=True):
        chosen = step.get(token_id)
        if chosen is None:
            raise EngineError(f"vLLM returned no logprob for the chosen token {token_id}")
        ranked = sorted(step.items(), key=lambda item: (_field(item[1], "rank") or 0,
                                                        -float(_field(item[1], "logprob"))))
        best = [(i, float(_field(e, "logprob"))) for i, e in ranked
                if (_field(e, "rank") or 0) <= top][:top]
        text = text_of(token_id)
        out.append(TokenLogprob(
            text, float(_field(chosen, "logprob")), text.encode(),
            tuple((text_of(i), lp, text_of(i).encode()) for i, lp in best), int(token_id)))
    return tuple(out)


class LoraIds:
    """Adapter ids (sha256 hex) as the positive integers vLLM names loaded LoRAs by,
    stable for the life of the engine."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, adapter_id: str) -> int:
        with self._lock:
            number = self._ids.get(adapter_id)
            if number is None:
                number = self._ids[adapter_id] = len(self._ids) + 1
            return number
