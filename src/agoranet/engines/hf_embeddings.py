"""Embeddings with ``transformers``: an embedding model, or a causal LM with a stated pooling.

:class:`HfEmbedder` runs a model's backbone over the inputs (right-padded, in batches
of similar lengths), pools the last layer's states with the attention mask and, if the
model says so, normalises them to unit length: what sentence-transformers computes.
:class:`TransformersEmbeddingEngine` is the ``transformers`` engine for a model
directory (or Hub id) in the sentence-transformers layout (see
:mod:`agoranet.engines.pooling`): it serves ``/v1/embeddings`` only; a chat or
completion request for it is a 404 (as OpenAI answers). A causal LM served by
:class:`~agoranet.engines.hf.TransformersEngine` embeds through an :class:`HfEmbedder`
over its decoder when the node states a pooling (``--embedding-pooling``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import torch

from agoranet.engines import capabilities
from agoranet.engines.base import GenerationRequest, ModelInfo, Prepared, StreamEvent
from agoranet.engines.embeddings import EmbeddingJob, EmbeddingsResult, PreparedEmbeddings
from agoranet.engines.hf_loading import DEFAULT_MODEL, _pick_device, _pick_dtype, resolve_model_dir
from agoranet.engines.pooling import Pooling, normalize, pool, read_pooling
from agoranet.engines.weights import hash_weights, weight_files, weights_id
from agoranet.errors import (
    ContextLengthError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
)

__all__ = ["BATCH", "HfEmbedder", "TransformersEmbeddingEngine"]

BATCH = 32  # inputs per forward pass


class HfEmbedder:
    """Embeds token ids with ``backbone`` (a model whose output has the last layer's states)."""

    def __init__(self, name: str, backbone: Any, tokenizer: Any, device: torch.device,
                 pooling: Pooling, max_length: int, max_waiting: int = 64) -> None:
        self.name = name
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.device = device
        self.pooling = pooling
        self.max_length = max_length
        self.vocab = int(backbone.get_input_embeddings().num_embeddings)
        self.dimension = int(backbone.config.hidden_size)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self._lock = threading.Lock()  # one forward pass at a time
        self.max_waiting = max_waiting
        self._waiting = 0  # requests embedding or waiting to (on the event loop's thread)
        self.counters = {"embedded_inputs": 0, "embedded_tokens": 0}

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise ModelNotFoundError(f"The model '{model}' does not embed on this node; it "
                                     f"embeds with '{self.name}'", param="model")

    def tokenize(self, job: EmbeddingJob) -> list[list[int]]:
        """Token ids of each input, checked (400s): ids within the vocabulary, each input
        within ``max_length`` tokens, ``dimensions`` the model's own."""
        self.check_model(job.model)
        if job.dimensions is not None and job.dimensions != self.dimension:
            raise InvalidRequestError(
                f"'{self.name}' makes {self.dimension}-dimensional embeddings and cannot "
                f"shorten them: leave out dimensions or set it to {self.dimension}",
                param="dimensions")
        ids: list[list[int]]
        if all(isinstance(item, str) for item in job.inputs):
            texts = [str(item) for item in job.inputs]
            ids = [list(map(int, row)) for row in
                   self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        else:
            ids = [[int(t) for t in item] for item in job.inputs]
            for index, row in enumerate(ids):
                bad = next((t for t in row if not 0 <= t < self.vocab), None)
                if bad is not None:
                    raise InvalidRequestError(
                        f"input[{index}] has token id {bad}, outside the vocabulary of "
                        f"'{self.name}' (0 to {self.vocab - 1})", param="input")
        for index, row in enumerate(ids):
            if len(row) > self.max_length:
                raise ContextLengthError(
                    f"This model's maximum input length is {self.max_length} tokens, and "
                    f"input[{index}] is {len(row)} tokens. Please shorten it.", param="input")
            if not row:
                raise InvalidRequestError(f"input[{index}] has no tokens", param="input")
        return ids

    async def prepare(self, job: EmbeddingJob) -> PreparedEmbeddings:
        ids = await asyncio.to_thread(self.tokenize, job)
        return PreparedEmbeddings(job, sum(len(row) for row in ids), ids)

    async def embed(self, prepared: PreparedEmbeddings) -> EmbeddingsResult:
        ids = prepared.payload
        if not isinstance(ids, list):
            raise TypeError("prepared embeddings do not come from this engine")
        if self._waiting >= self.max_waiting:
            raise OverloadedError(f"the embedder is busy: {self._waiting} requests in hand",
                                  retry_after=1)
        self._waiting += 1
        try:
            vectors = await asyncio.to_thread(self.vectors, ids)
        finally:
            self._waiting -= 1
        return EmbeddingsResult(vectors, prepared.prompt_tokens)

    def vectors(self, ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """One vector per row of ``ids``, in order (blocking)."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[list[float]] = [[] for _ in ids]
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), BATCH):
                chunk = order[start:start + BATCH]
                for index, vector in zip(chunk, self._forward([ids[i] for i in chunk]),
                                         strict=True):
                    out[index] = vector
        self.counters["embedded_inputs"] += len(ids)
        self.counters["embedded_tokens"] += sum(len(row) for row in ids)
        return out

    def _forward(self, rows: list[Sequence[int]]) -> list[list[float]]:
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)] = torch.tensor(list(row), dtype=torch.long)
            mask[i, :len(row)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        output = self.backbone(input_ids=input_ids, attention_mask=mask)
        states = output.last_hidden_state
        pooled = pool(states, mask, self.pooling.mode)
        if self.pooling.normalize:
            pooled = normalize(pooled)
        result: list[list[float]] = pooled.cpu().tolist()
        return result


def _refuse(name: str) -> ModelNotFoundError:
    """A generation request for an embedding model: a 404 as OpenAI answers ("not a chat
    model"), so a gateway asks another node serving the name for generation."""
    return ModelNotFoundError(f"'{name}' is an embedding model: it serves /v1/embeddings "
                              "only, not chat or text completions", param="model")


class TransformersEmbeddingEngine:
    """Serves one sentence-transformers model directory (or Hub id) for ``/v1/embeddings``."""

    name = "transformers"

    def __init__(self, model: str | None = None, *, served_model_name: str | None = None,
                 device: str = "auto", dtype: str = "auto", max_active: int = 8,
                 max_queue: int = 64, **_: Any) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        directory, default_name = resolve_model_dir(model or DEFAULT_MODEL)
        pooling = read_pooling(directory)
        where = _pick_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory)
            backbone = AutoModel.from_pretrained(directory, dtype=_pick_dtype(dtype, where))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load embedding model from {directory}: {exc}") from exc
        backbone.to(where).eval()
        config = backbone.config
        limits = [n for n in (pooling.max_length, getattr(config, "max_position_embeddings", None))
                  if isinstance(n, int) and n > 0]
        max_length = min(limits) if limits else int(tokenizer.model_max_length)
        hashes = hash_weights(weight_files(directory), root=directory)
        name = served_model_name or default_name
        self.info = ModelInfo(name=name, context_length=max_length, weights_sha256=hashes,
                              model_sha256=weights_id(hashes) if hashes else None,
                              capabilities=frozenset({capabilities.EMBEDDINGS}))
        self.directory = directory
        self.embedder = HfEmbedder(name, backbone, tokenizer, where, pooling, max_length,
                                   max_active + max_queue)

    def models(self) -> list[ModelInfo]:
        return [self.info]

    async def prepare(self, request: GenerationRequest) -> Prepared:
        raise _refuse(self.info.name)

    def stream(self, prepared: Prepared) -> AsyncIterator[StreamEvent]:
        raise _refuse(self.info.name)

    async def prepare_embeddings(self, job: EmbeddingJob) -> PreparedEmbeddings:
        return await self.embedder.prepare(job)

    async def embed(self, prepared: PreparedEmbeddings) -> EmbeddingsResult:
        return await self.embedder.embed(prepared)

    def stats(self) -> dict[str, int]:
        return dict(self.embedder.counters)

    async def aclose(self) -> None:
        return None
