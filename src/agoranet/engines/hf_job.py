"""One generation with ``transformers``, advanced one token per step."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from agoranet.engines.base import Delta, Finish, GenerationRequest, StreamEvent, TokenLogprob
from agoranet.engines.detok import IncrementalDetokenizer
from agoranet.engines.sampling import Sampler
from agoranet.engines.stops import StopMatcher
from agoranet.proofs.commitments import CommitmentBuilder

if TYPE_CHECKING:
    from agoranet.engines.constrained import SequenceGrammar
    from agoranet.engines.hf import LoadedModel

__all__ = ["DecodeJob"]


class DecodeJob:
    """Prefill on the first step, then one forward pass and one sampled token per step."""

    def __init__(
        self,
        loaded: LoadedModel,
        request: GenerationRequest,
        prompt_ids: list[int],
        before_step: Callable[[], None] | None = None,
        grammar: SequenceGrammar | None = None,
        banned: tuple[int, ...] = (),
        adapter: str | None = None,
    ) -> None:
        self._loaded = loaded
        self.prompt_ids = list(prompt_ids)
        self.adapter = adapter  # the LoRA adapter it runs with (None: the base model)
        self.last_token: int | None = None  # the token sampled last, the next step's input
        self._grammar = grammar  # constrained decoding: masks the logits before sampling
        self._before_step = before_step
        self._request = request
        self._prompt_len = len(prompt_ids)
        self._next_input = torch.tensor([prompt_ids], dtype=torch.long, device=loaded.device)
        self._cache: Any = None
        self._sampler = Sampler(request.temperature, request.top_p, request.seed, banned)
        self._detok = IncrementalDetokenizer(loaded.tokenizer, prompt_ids)
        self._stops = StopMatcher(request.stop)
        self._generated = 0
        self._token_text: dict[int, str] = {}
        self._commit = CommitmentBuilder() if request.commitments else None

    def step(self) -> list[StreamEvent]:
        if self._before_step is not None:
            self._before_step()  # e.g. switch to this sequence's LoRA adapter
        if self.last_token is not None:  # the prompt first, then the token sampled last
            self._next_input = torch.tensor([[self.last_token]], dtype=torch.long,
                                            device=self._loaded.device)
        with torch.inference_mode():
            output = self._loaded.model(
                input_ids=self._next_input, past_key_values=self._cache, use_cache=True,
                output_hidden_states=self._commit is not None,
            )
            if self._commit is not None:  # the final norm's output, what the LM head reads
                self._commit.add(output.hidden_states[-1][0])
        self._cache = output.past_key_values
        return self.consume(output.logits[0, -1])

    @property
    def wants_hidden(self) -> bool:
        """Whether it needs the last hidden states (for its commitments)."""
        return self._commit is not None

    def commit_hidden(self, rows: torch.Tensor) -> None:
        """Add the final norm's output for the positions it just fed (``[tokens, hidden]``)."""
        if self._commit is not None:
            self._commit.add(rows)

    def consume(self, logits: torch.Tensor) -> list[StreamEvent]:
        """Sample the next token from its last position's logits (one row) and say what
        that produced. A batched engine calls this with its row of the batch's logits."""
        if self._grammar is None:
            token_id = self._sampler.choose(logits)
        else:
            token_id = self._sampler.choose(self._grammar.mask(logits))
            self._grammar.accept(token_id)
        self._generated += 1
        self.last_token = token_id

        tokens = (self._logprob(logits, token_id),) if self._request.logprobs else ()
        if token_id in self._loaded.eos_ids and not self._request.ignore_eos:
            return [Delta(self._stops.flush(), tokens), self._finish("stop")]
        text, stopped = self._stops.feed(self._detok.push(token_id))
        if stopped:
            return [Delta(text, tokens), self._finish("stop")]
        if self._generated >= self._request.max_tokens:
            return [Delta(text + self._stops.flush(), tokens), self._finish("length")]
        return [Delta(text, tokens)]

    def _finish(self, reason: str) -> Finish:
        assert reason in ("stop", "length")
        commitments = self._commit.finish() if self._commit is not None else None
        return Finish("stop" if reason == "stop" else "length", self._prompt_len, self._generated,
                      commitments)

    def _text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = str(self._loaded.tokenizer.decode([token_id]))
            self._token_text[token_id] = text
        return text

    def _logprob(self, logits: torch.Tensor, token_id: int) -> TokenLogprob:
        found = Sampler.candidates(logits, token_id, self._request.top_logprobs)
        top = tuple(
            (self._text(i), lp, self._text(i).encode())
            for i, lp in zip(found.top_ids, found.top_logprobs, strict=True)
        )
        text = self._text(token_id)
        return TokenLogprob(text, found.logprob, text.encode(), top, token_id)
