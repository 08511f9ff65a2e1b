"""OpenAI's text completions (``POST /v1/completions``) as the gateway relays them.

:func:`plan_completion` checks a client's request and makes the nodes' request of it;
:data:`COMPLETIONS` is the relay's :class:`~agoranet.gateway.wire.Wire` for them: a node
that dies mid-answer is replaced by the next, whose prompt is the original prompt followed
by the text already streamed, with what is left of ``max_tokens`` (as a chat answer goes on
from a partial assistant message).

What the network cannot do is refused with a 400 naming the field, never ignored: several
prompts in one request, token ids as the prompt, ``n`` or ``best_of`` above 1, ``suffix``
(insertion), ``presence_penalty``, ``frequency_penalty``, ``logit_bias``, and ``echo``
together with ``logprobs`` (the prompt's own logprobs). ``echo`` alone is done here: the
prompt comes before the answer. Unknown fields are refused too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from agoranet.api.types import CompletionRequest
from agoranet.engines import capabilities
from agoranet.errors import InvalidRequestError
from agoranet.gateway.capabilities import Needs

__all__ = ["COMPLETIONS", "DEFAULT_MAX_TOKENS", "CompletionPlan", "CompletionsWire",
           "logprobs_ok", "plan_completion"]

DEFAULT_MAX_TOKENS: Final = 16  # OpenAI's default for a text completion

# Fields passed on to the nodes as they come (checked by the nodes' own request type).
_PASSED: Final = ("model", "temperature", "top_p", "seed", "stop", "user", "logprobs",
                  "ignore_eos")
_ACCEPTED: Final = frozenset({*_PASSED, "prompt", "max_tokens", "stream", "stream_options",
                              "echo", "n", "best_of", "suffix", "presence_penalty",
                              "frequency_penalty", "logit_bias", "agoranet"})


@dataclass(frozen=True)
class CompletionPlan:
    """A checked request: the nodes' request (``max_tokens`` set by the gateway), what the
    client asked of the answer's shape, and what it needs of a node."""

    body: dict[str, Any]
    prompt: str
    max_tokens: int | None  # None: as many as the context leaves (an explicit null)
    stream: bool
    include_usage: bool
    echo: bool
    needs: Needs

    @property
    def model(self) -> str:
        return str(self.body["model"])


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _prompt(value: Any) -> str:
    """The one prompt of the request, as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if value is None:
        raise _bad("prompt is required", "prompt")
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        raise _bad("one prompt per request: several prompts in one request (a batch) are "
                   "not supported; send one request for each", "prompt")
    if isinstance(value, list) and value and all(
            isinstance(p, int | list) for p in value):
        raise _bad("token ids as the prompt are not supported (nodes may use different "
                   "tokenizers): send the prompt as text", "prompt")
    raise _bad("prompt must be a string", "prompt")


def _check_refused(body: dict[str, Any]) -> None:
    unknown = sorted(set(body) - _ACCEPTED)
    if unknown:
        raise _bad(f"unknown field '{unknown[0]}'", unknown[0])
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is not None and (type(value) is not int or value < 1):
            raise _bad(f"{name} must be a positive integer", name)
        if value is not None and value > 1:
            raise _bad(f"{name} above 1 is not supported: one completion per request (ask "
                       "again for another)", name)
    if body.get("suffix") not in (None, ""):
        raise _bad("suffix (text to insert before) is not supported by the network's "
                   "models", "suffix")
    for name in ("presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _bad(f"{name} must be a number", name)
        if value not in (None, 0):
            raise _bad(f"{name} is not supported: leave it at 0", name)
    bias = body.get("logit_bias")
    if bias is not None and not isinstance(bias, dict):
        raise _bad("logit_bias must be an object of token ids to biases", "logit_bias")
    if bias:
        raise _bad("logit_bias is not supported (nodes may use different tokenizers)",
                   "logit_bias")
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise _bad("echo must be a boolean", "echo")
    if echo and body.get("logprobs") is not None:
        raise _bad("echo with logprobs is not supported (the prompt's own logprobs): ask "
                   "without echo and put the prompt before the answer yourself", "echo")


def plan_completion(body: dict[str, Any]) -> CompletionPlan:
    """The checked request ``body`` (400 for what the network cannot do)."""
    _check_refused(body)
    prompt = _prompt(body.get("prompt"))
    asked = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    node_body = {k: body[k] for k in _PASSED if body.get(k) is not None}
    node_body["prompt"] = prompt
    for name in ("stream", "stream_options"):  # checked with the rest, then the relay's own
        if body.get(name) is not None:
            node_body[name] = body[name]
    if asked is not None:
        node_body["max_tokens"] = asked
    # The nodes' own checks (types and ranges), here: a 400 before any node is asked.
    request = CompletionRequest.model_validate(node_body)
    if not request.stream and request.stream_options is not None:
        raise _bad("stream_options is only allowed with stream set to true", "stream_options")
    node_body.pop("stream", None)
    node_body.pop("stream_options", None)
    wants = request.logprobs is not None
    needs = Needs(frozenset({capabilities.LOGPROBS}) if wants else frozenset(),
                  {capabilities.LOGPROBS: "logprobs"} if wants else {}, constrained=False)
    return CompletionPlan(node_body, prompt, request.max_tokens if asked is not None else None,
                          request.stream,
                          bool(request.stream_options and request.stream_options.include_usage),
                          bool(body.get("echo")), needs)


class CompletionsWire:
    """The relay's :class:`~agoranet.gateway.wire.Wire` for text completions."""

    path = "/completions"

    def continuation(self, body: dict[str, Any], produced: str,
                     tokens_done: int) -> dict[str, Any]:
        """The prompt followed by the text so far, with what is left of ``max_tokens``."""
        if not produced:
            return body
        follow = {**body, "prompt": str(body["prompt"]) + produced}
        if body.get("max_tokens") is not None:
            follow["max_tokens"] = max(1, int(body["max_tokens"]) - tokens_done)
        return follow

    def as_chat_chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """A ``text_completion`` event as a chat chunk: each choice's ``text`` as its
        delta's content; logprobs not of the completions' shape become a value of the
        wrong type, so that the relay fails the node for them."""
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return chunk
        return {**chunk, "choices": [_as_chat_choice(c) for c in choices]}


def _as_chat_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        return choice
    converted = {k: v for k, v in choice.items() if k not in ("text", "delta")}
    converted["delta"] = {"content": choice.get("text")}
    logprobs = choice.get("logprobs")
    if logprobs is not None and not logprobs_ok(logprobs):
        converted["logprobs"] = [logprobs]  # not an object: the relay's check refuses it
    return converted


def logprobs_ok(logprobs: Any) -> bool:
    """Whether ``logprobs`` is of a text completion's shape: lists of one length, of
    token strings, numbers, objects of strings to numbers and integer offsets."""
    if not isinstance(logprobs, dict):
        return False
    tokens = logprobs.get("tokens", [])
    values = logprobs.get("token_logprobs", [])
    tops = logprobs.get("top_logprobs", [])
    offsets = logprobs.get("text_offset", [])
    if not all(isinstance(x, list) for x in (tokens, values, tops, offsets)):
        return False
    if len({len(tokens), len(values), len(offsets)}) != 1 or len(tops) not in (0, len(tokens)):
        return False
    number = (int, float)
    return (all(isinstance(t, str) for t in tokens)
            and all(v is None or (isinstance(v, number) and not isinstance(v, bool))
                    for v in values)
            and all(type(o) is int for o in offsets)
            and all(isinstance(t, dict | None) and all(
                isinstance(k, str) and isinstance(v, number) and not isinstance(v, bool)
                for k, v in (t or {}).items()) for t in tops))


COMPLETIONS: Final = CompletionsWire()
